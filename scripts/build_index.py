#!/usr/bin/env python3
"""Embedding-index build script: catalog file -> guide directory (same options as `textguide build-index`).

    python scripts/build_index.py CATALOG OUTPUT [--encoder minilm|use-multilingual|PATH] [--factory HNSW32,Flat]
    python scripts/build_index.py --sample indexes/sample     # the bundled sample catalog
"""

import sys

from textguide.catalog import sample_catalog_path
from textguide.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] == "--sample":
        argv = [str(sample_catalog_path()), *argv[1:]]
    sys.exit(main(["build-index", *argv]))
