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
import re
import shutil
import stat
import time
import uuid
from pathlib import Path
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

logger = logging.getLogger("textguide")

MANIFEST = "manifest.json"
#: Sub-directories kept with an artifact but outside its checksums (training / evaluation reports).
UNCHECKED_DIRS = ("reports",)


class ArtifactError(ValueError):
    """An artifact directory is missing, corrupted, or of an unexpected format."""


class ConcurrentWriteError(ValueError):
    """Another writer changed an artifact directory since this process read it (its update would be lost)."""


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


SELF_DIGEST = "manifest_sha256"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The manifest's own SHA-256: over its canonical JSON without the ``manifest_sha256`` field."""
    body = {k: v for k, v in manifest.items() if k != SELF_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def blame_manifest(manifest: Any, mpath: Path, hint: str) -> None:
    """Before a file is called corrupted, check the manifest itself: when its own checksum does not match, the
    damage is in the manifest (its recorded checksums cannot be trusted), not in the data file."""
    if isinstance(manifest, dict) and isinstance(manifest.get(SELF_DIGEST), str) \
            and manifest[SELF_DIGEST] != manifest_digest(manifest):
        raise ArtifactError(f"{mpath}: the manifest is damaged (its own {SELF_DIGEST} does not match its contents), "
                            f"so the file checksums it records cannot be trusted; {hint}")


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file under ``directory`` and write ``manifest.json`` beside them (with its own checksum)."""
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(directory).as_posix()
            if rel.split("/", 1)[0] in UNCHECKED_DIRS:  # human-facing reports may be rewritten later
                continue
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = dict(manifest, files=files, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    manifest.pop(SELF_DIGEST, None)
    manifest[SELF_DIGEST] = manifest_digest(manifest)
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
    check_manifest(directory, manifest, kind=kind, format_version=format_version, rebuild_hint=rebuild_hint)
    if verify:
        verify_files(directory, manifest, rebuild_hint)
    return manifest


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_relpath(rel: Any, where: str) -> str:
    """A path inside an artifact: relative, '/'-separated, no '..', '.', empty parts or backslashes."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise ArtifactError(f"{where}: file name {rel!r} is not a plain relative path inside the directory")
    return rel


def check_manifest(directory: Path, manifest: Any, *, kind: str, format_version: int, rebuild_hint: str) -> None:
    """Structure of a manifest: an object with the right format and version, and a non-empty ``files`` object of
    safe relative paths -> ``{"sha256": 64 hex digits, "bytes": size}``. Each problem is one ``ArtifactError``
    that names ``manifest.json`` and the field."""
    where = f"{directory / MANIFEST}"
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where}: expected a JSON object, found {type(manifest).__name__}; {rebuild_hint}")
    if manifest.get("format") != kind:
        raise ArtifactError(f"{directory}: expected format {kind!r}, found {manifest.get('format')!r}; {rebuild_hint}")
    found = manifest.get("format_version")
    if found != format_version or isinstance(found, bool):
        raise ArtifactError(
            f"{directory}: expected format_version {format_version}, found {found}; "
            f"this textguide reads version {format_version}: {rebuild_hint}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{where}: 'files' must be a non-empty object listing every file with its sha256 and "
                            f"size, found {files!r:.80}; the manifest is damaged: {rebuild_hint}")
    for rel, info in files.items():
        check_relpath(rel, where)
        if rel == MANIFEST or rel.split("/", 1)[0] in UNCHECKED_DIRS:
            raise ArtifactError(f"{where}: 'files' lists {rel!r}, which is never checksummed; {rebuild_hint}")
        size = info.get("bytes") if isinstance(info, dict) else None
        digest = info.get("sha256") if isinstance(info, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str) \
                or not _SHA256.fullmatch(digest):
            raise ArtifactError(f"{where}: files[{rel!r}] must be {{\"sha256\": 64 hex digits, \"bytes\": size}}, "
                                f"found {info!r:.120}; the manifest is damaged: {rebuild_hint}")


def verify_files(directory: Path, manifest: dict[str, Any], rebuild_hint: str) -> None:
    """Check that every file listed in the manifest exists with its recorded size and SHA-256."""
    for rel, info in manifest.get("files", {}).items():
        p = directory / check_relpath(rel, str(directory / MANIFEST))
        if not p.is_file():
            raise ArtifactError(f"{p}: listed in {MANIFEST} but missing; {rebuild_hint}")
        size = p.stat().st_size
        if size != info["bytes"]:
            blame_manifest(manifest, directory / MANIFEST, rebuild_hint)
            raise ArtifactError(
                f"{p}: expected {info['bytes']} bytes, found {size} (truncated or modified); {rebuild_hint}"
            )
        digest = sha256_file(p)
        if digest != info["sha256"]:
            blame_manifest(manifest, directory / MANIFEST, rebuild_hint)
            raise ArtifactError(
                f"{p}: checksum mismatch (expected sha256 {info['sha256'][:12]}..., found {digest[:12]}...); "
                f"the file is corrupted: {rebuild_hint}"
            )


# ------------------------------------------------------------------------------------------------ snapshots
@dataclass
class Snapshot:
    """One version of an artifact directory, read whole into memory: its manifest and every listed file's bytes
    (each checked against the manifest's size and SHA-256). Nothing a writer does afterwards can change it."""

    directory: Path
    manifest: dict[str, Any]
    files: dict[str, bytes]
    rebuild_hint: str

    def __contains__(self, rel: str) -> bool:
        return rel in self.files

    def parse(self, rel: str, what: str, parser: Callable[[bytes], Any]) -> Any:
        """``parser(bytes of rel)``; a missing entry or any parser error is an ``ArtifactError`` naming the file."""
        if rel not in self.files:
            raise ArtifactError(f"{self.directory / MANIFEST}: 'files' does not list {rel!r}, which this {what} needs; "
                                f"the manifest is damaged: {self.rebuild_hint}")
        try:
            return parser(self.files[rel])
        except ArtifactError:
            raise
        except Exception as e:  # noqa: BLE001 - FAISS, Arrow, numpy, safetensors raise their own types
            raise ArtifactError(f"{self.directory / rel}: cannot read it as {what} ({type(e).__name__}: {e}); "
                                f"{self.rebuild_hint}") from e


class _Replaced(Exception):
    """The directory version being read was replaced (and is being deleted) by a writer."""


_OPEN = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_DIR = _OPEN | getattr(os, "O_DIRECTORY", 0)


def _read_at(dfd: int, rel: str, limit: int | None = None) -> bytes:
    """The bytes of ``rel`` under the open directory ``dfd``, never following a symbolic link; a regular file only."""
    parts = rel.split("/")
    fds = []
    try:
        cur = dfd
        for part in parts[:-1]:
            cur = os.open(part, _OPEN_DIR, dir_fd=cur)
            fds.append(cur)
        fd = os.open(parts[-1], _OPEN, dir_fd=cur)
        fds.append(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{rel} is not a regular file")
        if limit is not None and st.st_size != limit:
            raise _SizeMismatch(st.st_size)
        chunks = []
        while block := os.read(fd, 1 << 24):
            chunks.append(block)
        return b"".join(chunks)
    finally:
        for fd in fds:
            os.close(fd)


class _SizeMismatch(Exception):
    pass


def _unlisted(dfd: int, listed: set[str], prefix: str = "") -> list[str]:
    """Files under ``dfd`` (reports/ aside) that the manifest does not list."""
    out = []
    for name in sorted(os.listdir(dfd)):
        rel = prefix + name
        if rel == MANIFEST or (not prefix and name in UNCHECKED_DIRS):
            continue
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, _OPEN_DIR, dir_fd=dfd)
            try:
                out += _unlisted(sub, listed, rel + "/")
            finally:
                os.close(sub)
        elif rel not in listed:
            out.append(rel)
    return out


def read_snapshot(
    directory: str | os.PathLike[str],
    *,
    kind: str,
    format_version: int,
    verify: bool = True,
    rebuild_hint: str = "rebuild it with `textguide build-index`",
    attempts: int = 20,
) -> Snapshot:
    """Read one whole version of an artifact directory into memory, through one directory handle.

    The directory is opened once and every file is read through that handle, so a writer that swaps a new
    version in meanwhile cannot mix it in; if the version being read is deleted under us (its files vanish),
    the new version is read from the start. Every listed file's size and (with ``verify``) SHA-256 is checked on
    the very bytes returned; files present but not listed are an error, as are paths leaving the directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory; {rebuild_hint}")
    for attempt in range(attempts):
        try:
            dfd = os.open(directory, _OPEN_DIR)
        except FileNotFoundError:  # between a fallback writer's two renames
            time.sleep(0.01)
            continue
        try:
            return _snapshot_at(dfd, directory, kind, format_version, verify, rebuild_hint)
        except _Replaced:
            logger.info("%s was replaced while loading; reading the new version", directory)
        finally:
            os.close(dfd)
    raise ArtifactError(f"{directory}: changed {attempts} times while being read; try again when writers are done")


def _gone(dfd: int, directory: Path) -> bool:
    """Whether the directory opened as ``dfd`` is no longer the one at ``directory`` (a writer replaced it)."""
    try:
        return os.fstat(dfd).st_ino != os.stat(directory).st_ino
    except OSError:
        return True


def _snapshot_at(dfd: int, directory: Path, kind: str, format_version: int, verify: bool, hint: str) -> Snapshot:
    mpath = directory / MANIFEST
    try:
        raw = _read_at(dfd, MANIFEST)
    except FileNotFoundError:
        if _gone(dfd, directory):
            raise _Replaced from None
        raise ArtifactError(f"{directory}: expected {MANIFEST} in a textguide {kind} directory, found none; "
                            f"{hint}") from None
    except (OSError, ArtifactError) as e:
        raise ArtifactError(f"{mpath}: cannot read it ({e}); {hint}") from e
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: manifest is not valid JSON ({e}); {hint}") from e
    check_manifest(directory, manifest, kind=kind, format_version=format_version, rebuild_hint=hint)
    listed = manifest["files"]
    try:
        extra = _unlisted(dfd, set(listed))
    except FileNotFoundError:
        raise _Replaced from None
    if extra:
        raise ArtifactError(f"{directory}: {extra[:5]} present but not listed in {MANIFEST} (added by hand, or the "
                            f"manifest is damaged); nothing unlisted is loaded: {hint}")
    files = {}
    for rel, info in listed.items():
        p = directory / rel
        try:
            data = _read_at(dfd, rel, info["bytes"])
        except FileNotFoundError:
            if _gone(dfd, directory):
                raise _Replaced from None
            raise ArtifactError(f"{p}: listed in {MANIFEST} but missing; {hint}") from None
        except _SizeMismatch as e:
            blame_manifest(manifest, mpath, hint)
            raise ArtifactError(f"{p}: expected {info['bytes']} bytes, found {e.args[0]} (truncated or modified); "
                                f"{hint}") from None
        except (OSError, ArtifactError) as e:
            raise ArtifactError(f"{p}: cannot read it ({e}); {hint}") from e
        if len(data) != info["bytes"]:
            blame_manifest(manifest, mpath, hint)
            raise ArtifactError(f"{p}: expected {info['bytes']} bytes, found {len(data)} (truncated or modified); "
                                f"{hint}")
        if verify:
            digest = hashlib.sha256(data).hexdigest()
            if digest != info["sha256"]:
                blame_manifest(manifest, mpath, hint)
                raise ArtifactError(
                    f"{p}: checksum mismatch (expected sha256 {info['sha256'][:12]}..., found {digest[:12]}...); "
                    f"the file is corrupted: {hint}"
                )
        files[rel] = data
    return Snapshot(directory, manifest, files, hint)


def check_config_fields(cls: type, d: dict[str, Any]) -> None:
    """Refuse a config dict with fields the dataclass ``cls`` does not have (ValueError naming them and the
    known ones): a config written by another textguide version, or a typo in a hand-written one."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
