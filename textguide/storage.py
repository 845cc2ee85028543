"""Artifact directories: atomic writes, a JSON manifest with checksums, and verified loads.

An artifact is a directory holding plain files (FAISS index, ``.npy`` arrays, parquet tables,
safetensors weights, JSON configs) and a ``manifest.json`` that records the format version, what
produced it and the SHA-256 of every file. Writers build the whole directory in a temporary sibling
and swap it into place in one step, so a crash, a kill or an exception mid-write leaves the previous
artifact untouched, and readers see the old or the new state, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

logger = logging.getLogger("textguide")

MANIFEST = "manifest.json"
#: Sub-directories kept with an artifact but outside its checksums (training / evaluation reports).
UNCHECKED_DIRS = ("reports",)


class ArtifactError(ValueError):
    """An artifact directory is missing, corrupted, or of an unexpected format."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _clean_stale(dst: Path) -> None:
    """Remove temp siblings left by writers that were killed (their pid no longer runs)."""
    for p in dst.parent.glob(f".{dst.name}.tmp-*"):
        try:
            pid = int(p.name.split(".tmp-")[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        alive = True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            pass
        if not alive or pid == os.getpid() and not p.exists():
            shutil.rmtree(p, ignore_errors=True)


def check_replaceable(dst: str | os.PathLike[str], kind: str, *, force: bool = False) -> Path | None:
    """Refuse to replace ``dst`` unless it is absent, empty or an artifact of ``kind`` (its manifest says so).

    Returns None when ``dst`` may simply be replaced. With ``force``, a directory of anything else is not
    deleted either: the returned sibling path (``<dst>.replaced-<time>``) is where its contents will be kept,
    and a warning lists what moved there.
    """
    dst = Path(dst).absolute()
    if not os.path.lexists(dst):
        return None
    if dst.is_symlink() or not dst.is_dir():
        raise ValueError(f"{dst} is a file{' (a symbolic link)' if dst.is_symlink() else ''}, not a directory: "
                         f"give the path of a new or existing {kind} directory")
    entries = sorted(p.name for p in dst.iterdir())
    if not entries:
        return None
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((dst / MANIFEST).read_text(encoding="utf-8"))
        if isinstance(manifest, dict) and manifest.get("format") == kind:
            return None
    shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
    if not force:
        raise ValueError(
            f"{dst} is not a textguide guide ({len(entries)} entries: {shown}); refusing to replace it. "
            f"Choose a new or empty directory, or pass --force (force=True) to write the guide there and move "
            f"its current contents aside to {dst.name}.replaced-<time>"
        )
    keep = dst.parent / f"{dst.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    logger.warning("%s is not a textguide guide: its %d entries (%s) will be moved to %s, not deleted",
                   dst, len(entries), shown, keep)
    return keep


@contextlib.contextmanager
def atomic_directory(dst: str | os.PathLike[str], *, keep_old: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on clean exit it replaces ``dst`` atomically, on error it is removed.

    With ``keep_old``, the previous contents of ``dst`` are moved there instead of being deleted.
    """
    dst = Path(dst).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(dst)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        if not dst.exists():
            os.rename(tmp, dst)
        elif keep_old is not None:  # a directory that was not ours: move it aside, never delete it
            os.rename(dst, keep_old)
            os.rename(tmp, dst)
        elif _exchange(tmp, dst):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old version
        else:  # portable fallback: a short window where dst is absent
            old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(dst, old)
            os.rename(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file under ``directory`` and write ``manifest.json`` beside them."""
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(directory).as_posix()
            if rel.split("/", 1)[0] in UNCHECKED_DIRS:  # human-facing reports may be rewritten later
                continue
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = dict(manifest, files=files, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    with open(directory / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    return manifest


def write_artifact(dst: str | os.PathLike[str], write: Callable[[Path], dict[str, Any]], *,
                   keep_old: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Build an artifact atomically: ``write(tmpdir)`` writes files and returns the manifest fields.

    ``keep_old``: where the previous contents of ``dst`` go instead of being deleted (see :func:`check_replaceable`).
    """
    with atomic_directory(dst, keep_old=keep_old) as tmp:
        fields = write(tmp)
        return write_manifest(tmp, fields)


def read_manifest(
    directory: str | os.PathLike[str],
    *,
    kind: str,
    format_version: int,
    verify: bool = True,
    rebuild_hint: str = "rebuild it with `textguide build-index`",
) -> dict[str, Any]:
    """Read and check ``manifest.json``: format name and version, then every file's checksum."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory; {rebuild_hint}")
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{directory}: expected {MANIFEST} in a textguide {kind} directory, found none; {rebuild_hint}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: manifest is not valid JSON ({e}); {rebuild_hint}") from e
    if manifest.get("format") != kind:
        raise ArtifactError(
            f"{directory}: expected format {kind!r}, found {manifest.get('format')!r}; {rebuild_hint}"
        )
    found = manifest.get("format_version")
    if found != format_version:
        raise ArtifactError(
            f"{directory}: expected format_version {format_version}, found {found}; "
            f"this textguide reads version {format_version}: {rebuild_hint}"
        )
    if verify:
        verify_files(directory, manifest, rebuild_hint)
    return manifest


def verify_files(directory: Path, manifest: dict[str, Any], rebuild_hint: str) -> None:
    """Check that every file listed in the manifest exists with its recorded size and SHA-256."""
    for rel, info in manifest.get("files", {}).items():
        p = directory / rel
        if not p.is_file():
            raise ArtifactError(f"{p}: listed in {MANIFEST} but missing; {rebuild_hint}")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise ArtifactError(
                f"{p}: expected {info['bytes']} bytes, found {size} (truncated or modified); {rebuild_hint}"
            )
        digest = sha256_file(p)
        if digest != info["sha256"]:
            raise ArtifactError(
                f"{p}: checksum mismatch (expected sha256 {info['sha256'][:12]}..., found {digest[:12]}...); "
                f"the file is corrupted: {rebuild_hint}"
            )
