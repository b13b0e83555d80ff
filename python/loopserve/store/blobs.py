"""Content-addressed files: the name of a blob is the sha256 of its bytes.

Writes go to a temporary file in the same directory, are fsynced, then renamed into place
(and the directory fsynced), so a crash leaves either no blob or the whole blob, never part
of one. Reads check the digest, so a tampered or truncated blob is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path

from loopserve.errors import LoopserveError

_CHUNK = 1 << 20


class IntegrityError(LoopserveError):
    """A blob's bytes no longer match its sha256 (tampered, truncated or missing)."""


# A temporary file untouched for this long was left by a writer killed mid-write (SIGKILL, power
# loss): a live writer touches its file with every chunk.
STALE_TMP_S = 3600
_swept: set[Path] = set()  # the roots this process has swept (once each)


def sweep_stale_temporaries(root: Path) -> int:
    """Removes `.tmp-*` files older than STALE_TMP_S under a blob root; how many."""
    now, removed = time.time(), 0
    for tmp in [*root.glob(".tmp-*"), *root.glob("*/.tmp-*")]:
        with contextlib.suppress(OSError):
            if now - tmp.lstat().st_mtime > STALE_TMP_S:
                tmp.unlink()
                removed += 1
    return removed


class BlobStore:
    """Thread- and process-safe: blobs are immutable and every write is an atomic rename."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.root.resolve() not in _swept:
            _swept.add(self.root.resolve())
            sweep_stale_temporaries(self.root)

    def path(self, digest: str) -> Path:
        _check_digest(digest)
        return self.root / digest[:2] / digest[2:]

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    def put_bytes(self, data: bytes | memoryview) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if not self.exists(digest):
            self._write(digest, lambda f: f.write(data))
        return digest

    def put_file(self, source: str | os.PathLike) -> str:
        """Copy a file in; returns its sha256. Hashed while copied, so the name always matches the
        bytes stored even if the source changes meanwhile; large files are streamed, never read whole."""
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as dst, open(source, "rb") as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            digest = h.hexdigest()
            if self.exists(digest):
                os.unlink(tmp)
            else:
                self._place(tmp, digest)
            return digest
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read_bytes(self, digest: str) -> bytes:
        """The blob's bytes, checked against its digest."""
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"blob {digest} is missing from {self.root}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"blob {digest} at {path} does not match its sha256 "
                                 f"({len(data)} bytes): it was modified or truncated")
        return data

    def verify(self, digest: str) -> Path:
        """Check a blob's bytes against its digest (streamed) and return its path."""
        path = self.path(digest)
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            raise IntegrityError(f"blob {digest} is missing from {self.root}") from None
        if h.hexdigest() != digest:
            raise IntegrityError(f"blob {digest} at {path} does not match its sha256: "
                                 f"it was modified or truncated")
        return path

    def _write(self, digest: str, write) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            self._place(tmp, digest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _place(self, tmp: str, digest: str) -> None:
        """Moves a written, fsynced temporary file to its digest's path, read-only, and fsyncs
        the directory so the rename survives a crash."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)  # blobs are immutable
        os.replace(tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _check_digest(digest: str) -> None:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise IntegrityError(f"not a sha256 digest: {digest!r}")

