"""A version's artifacts as a directory on disk, every file checked against its sha256.

The default destination is a cache under the store root keyed by the version's content digest:
built in a temporary directory and renamed into place, so a reader never sees half of it, and
re-hashed on every call, so a load is always verified (a cache that no longer matches is rebuilt
from the blobs; a blob that no longer matches is refused).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath

from loopserve.registry.errors import RegistryError
from loopserve.registry.query import get_version
from loopserve.registry.records import ArtifactFile, ModelVersion
from loopserve.registry.schema import opened
from loopserve.store import IntegrityError, Store

_CHUNK = 1 << 20
CACHE_DIR = ("cache", "models")


def _safe_relative(version: ModelVersion, path: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or not rel.parts or any(p in ("", ".", "..") for p in rel.parts):
        raise IntegrityError(f"model {version.name!r} version {version.version}: artifact path {path!r} is not a "
                             f"safe relative path; the registry metadata was altered")
    return rel


def _refuse(version: ModelVersion, artifact: ArtifactFile, what: str) -> IntegrityError:
    return IntegrityError(f"model {version.name!r} version {version.version}: artifact {artifact.path!r} "
                          f"(sha256 {artifact.sha256[:12]}..., {artifact.size} bytes) {what}; refusing to load it")


def _copy_verified(store: Store, version: ModelVersion, artifact: ArtifactFile, dest: Path) -> None:
    """Copy the artifact's blob to `dest` (via a temporary name), hashing as it goes."""
    try:
        source = open(store.blobs.path(artifact.sha256), "rb")
    except FileNotFoundError:
        raise _refuse(version, artifact, f"is missing from the blob store {store.blobs.root}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
    try:
        h = hashlib.sha256()
        size = 0
        with source, os.fdopen(fd, "wb") as out:
            while chunk := source.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if h.hexdigest() != artifact.sha256 or size != artifact.size:
            raise _refuse(version, artifact, f"does not match its recorded sha256 in the blob store ({size} bytes "
                                             f"read): it was modified or truncated")
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _matches(version: ModelVersion, directory: Path) -> bool:
    """Whether `directory` holds exactly the version's files with their recorded digests."""
    expected = {_safe_relative(version, a.path).as_posix(): a for a in version.artifacts}
    present = {f.relative_to(directory).as_posix() for f in directory.rglob("*") if not f.is_dir()}
    if present != set(expected):
        return False
    for rel, artifact in expected.items():
        file = directory / rel
        if file.is_symlink() or file.stat().st_size != artifact.size:
            return False
        h = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        if h.hexdigest() != artifact.sha256:
            return False
    return True


def _build(store: Store, version: ModelVersion, directory: Path) -> None:
    for artifact in version.artifacts:
        _copy_verified(store, version, artifact, directory / _safe_relative(version, artifact.path))


def materialize(name: str, ref: int | str = "latest", dest_dir: str | os.PathLike | None = None,
                store: Store | None = None) -> Path:
    """A directory holding the artifacts of version `ref` of model `name`, each verified by sha256.

    With `dest_dir`, the files are written there (existing files of the same names replaced).
    Without, a cache directory under the store root keyed by the version's content is returned,
    built on first use. A tampered, truncated or missing artifact raises IntegrityError naming
    the model, the version and the file.
    """
    with opened(store) as s:
        version = get_version(name, ref, store=s)
        if dest_dir is not None:
            dest = Path(dest_dir)
            dest.mkdir(parents=True, exist_ok=True)
            _build_into(s, version, dest)
            return dest
        cache = s.root.joinpath(*CACHE_DIR)
        if not _is_digest(version.content_digest):  # from the database: never trusted as a path
            raise IntegrityError(f"model {name!r} version {version.version}: its content digest "
                                 f"{version.content_digest!r} is not a sha256; the registry database was altered")
        final = cache / version.content_digest
        if final.is_dir() and _matches(version, final):
            return final
        cache.mkdir(parents=True, exist_ok=True)
        _sweep_stale(cache)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".tmp-"))
        try:
            _build(s, version, tmp)
            for _ in range(3):
                try:
                    os.replace(tmp, final)  # fails if `final` exists and is not empty
                    return final
                except OSError:
                    pass
                # Another process may have just placed a good copy (never move that one away:
                # it may be loading from it); a stale or altered one is moved aside whole.
                if final.is_dir() and _matches(version, final):
                    return final
                stale = Path(tempfile.mkdtemp(dir=cache, prefix=".stale-"))
                with contextlib.suppress(FileNotFoundError):
                    os.replace(final, stale / "dir")
                shutil.rmtree(stale, ignore_errors=True)
            raise RegistryError(f"model {name!r} version {version.version}: could not place the materialized "
                                f"files at {final}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _build_into(store: Store, version: ModelVersion, dest: Path) -> None:
    """Every artifact verified in a temporary directory inside `dest`, then moved into place:
    a version refused halfway (a tampered or missing blob) leaves `dest` as it was."""
    _sweep_stale(dest)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".tmp-"))
    try:
        _build(store, version, tmp)
        for artifact in version.artifacts:
            rel = _safe_relative(version, artifact.path)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, dest / rel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# A temporary directory older than this was left by a process killed mid-build (a build takes
# seconds to minutes): removed when the next build there starts.
STALE_TMP_S = 3600


def _sweep_stale(directory: Path) -> None:
    now = time.time()
    for entry in directory.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - entry.lstat().st_mtime > STALE_TMP_S:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _is_digest(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
