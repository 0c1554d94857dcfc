"""Content-addressed blob storage: bytes named by their sha256, verified on every read.

`BlobStore` is the interface (an S3-compatible store implements the same four methods); `LocalBlobStore`
keeps blobs under `root/ab/cd/abcd...`, written to a temporary file, fsynced and renamed into place, so
a reader never sees a partial blob. Uploads are received with `receive()` into a `StagedBlob`, hashed as
they arrive, validated, and only then `put` into the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from mint.errors import Code, MintError, invalid, not_found
from mint.names import check_sha256

CHUNK_BYTES = 4 * 1024 * 1024
# An upload's staging file is written at least every upload_idle_s (mint.limits; 30 s by default) or the upload
# is ended, and validating the largest adapter takes well under a minute; a staging file untouched for an
# hour belongs to no live upload, even from another catalog process sharing the directory.
STALE_UPLOAD_S = 3600.0
_UPLOAD_PREFIX = "upload-"


@dataclasses.dataclass(slots=True)
class StagedBlob:
    """Bytes received into a local temporary file, with their hash; `discard()` when not stored."""

    path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class BlobStore(Protocol):
    def put(self, staged: StagedBlob) -> None: ...
    def exists(self, sha256: str) -> bool: ...
    def read_chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES, *, verify: bool = True) -> Iterator[bytes]: ...
    def local_path(self, sha256: str) -> Path | None: ...
    def staging_dir(self) -> Path: ...


def receive(chunks: Iterable[bytes], staging_dir: Path, *, max_bytes: int, expected_sha256: str = "") -> StagedBlob:
    """Write `chunks` to a temp file in `staging_dir` while hashing; enforce the size limit as bytes arrive."""
    digest = hashlib.sha256()
    size = 0
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=staging_dir, prefix=_UPLOAD_PREFIX)
    path = Path(name)
    try:
        pending: list[bytes | memoryview] = []  # written together: an in-process publisher sends one chunk per tensor
        pending_bytes = 0
        for chunk in chunks:
            nbytes = memoryview(chunk).nbytes
            size += nbytes
            if size > max_bytes:
                raise invalid(f"upload exceeds the limit of {max_bytes} bytes")
            digest.update(chunk)
            pending.append(chunk)
            pending_bytes += nbytes
            if pending_bytes >= _WRITE_BYTES or len(pending) >= _WRITE_BUFFERS:
                _write_all(fd, pending, pending_bytes)
                pending, pending_bytes = [], 0
        _write_all(fd, pending, pending_bytes)
        os.fsync(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    sha = digest.hexdigest()
    if expected_sha256 and expected_sha256 != sha:
        path.unlink(missing_ok=True)
        raise invalid(f"upload has sha256 {sha} but the client declared {expected_sha256}")
    return StagedBlob(path=path, sha256=sha, size=size)


_WRITE_BYTES = 1 << 20
_WRITE_BUFFERS = 512  # below IOV_MAX (1024)


def _write_all(fd: int, buffers: list[bytes | memoryview], nbytes: int) -> None:
    """One writev for many small buffers; a short write (rare on a regular file) is finished plainly."""
    if not buffers:
        return
    written = os.writev(fd, buffers)
    if written < nbytes:
        rest = memoryview(b"".join(buffers))[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]


class LocalBlobStore:
    def __init__(self, root: str | os.PathLike, *, create: bool = True):
        """`create=False` opens an existing store to read (an engine's view of the catalog's store)."""
        self.root = Path(root)
        self._staging = self.root / "staging"
        if not create:
            if not self.root.is_dir():
                raise invalid(f"blob store {self.root} is not a directory")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(exist_ok=True)

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def staging_dir(self) -> Path:
        return self._staging

    def remove_stale_uploads(self, older_than_s: float = STALE_UPLOAD_S) -> int:
        """Delete staging files left by uploads that ended without cleaning up (a catalog killed mid-upload);
        returns how many. The catalog runs this when it starts."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self._staging.glob(f"{_UPLOAD_PREFIX}*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # finished (or removed by another catalog) meanwhile
                continue
        return removed

    def put(self, staged: StagedBlob) -> None:
        target = self.path(staged.sha256)
        if target.exists():  # content-addressed: the same bytes are already there
            staged.discard()
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def local_path(self, sha256: str) -> Path | None:
        """The stored file (verified when it was put), for a reader on this machine; None if absent."""
        path = self.path(sha256)
        return path if path.is_file() else None

    def read_chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES, *, verify: bool = True) -> Iterator[bytes]:
        """The blob's bytes; raises DATA_LOSS at the end if they do not hash to `sha256`. `verify=False` is
        for a reader that hashes the bytes itself (an engine's disk cache), so they are hashed once."""
        path = self.path(sha256)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed in the generator's finally
        except FileNotFoundError:
            raise not_found(f"blob {sha256} is not in the blob store") from None
        return _verified(f, sha256, chunk_bytes) if verify else _chunks(f, chunk_bytes)

    def read_bytes(self, sha256: str) -> bytes:
        return b"".join(self.read_chunks(sha256))


def _chunks(f, chunk_bytes: int) -> Iterator[bytes]:
    try:
        while chunk := f.read(chunk_bytes):
            yield chunk
    finally:
        f.close()


def _verified(f, sha256: str, chunk_bytes: int) -> Iterator[bytes]:
    digest = hashlib.sha256()
    try:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
            yield chunk
    finally:
        f.close()
    if digest.hexdigest() != sha256:
        raise MintError(Code.DATA_LOSS, f"blob {sha256} is corrupt: its bytes hash to {digest.hexdigest()}")
