"""textguide: text-driven shopping guidance.

Frozen sentence-transformer embeddings of product text, small multi-task adapters on top, and a
FAISS index that serves candidates. See README.md.
"""

__version__ = "0.1.0"

from .catalog import Catalog, ColumnMap, load_catalog, sample_catalog_path  # noqa: E402
from .encoder import EmbeddingCache, HashingEncoder, TextEncoder, load_encoder  # noqa: E402
from .guide import Guide, Hits, build_index  # noqa: E402
from .index import IndexConfig, ItemIndex  # noqa: E402
from .storage import ArtifactError  # noqa: E402

__all__ = [
    "ArtifactError",
    "Catalog",
    "ColumnMap",
    "EmbeddingCache",
    "Guide",
    "HashingEncoder",
    "Hits",
    "IndexConfig",
    "ItemIndex",
    "TextEncoder",
    "build_index",
    "load_catalog",
    "load_encoder",
    "sample_catalog_path",
]
