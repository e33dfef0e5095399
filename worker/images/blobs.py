"""Content-addressed blob store: `blobs/sha256/<hex>`.

Invariant: a file under `blobs/sha256/` always holds exactly the bytes whose sha256 is its name.
Writers stream into a private temp file under `tmp/`, hashing as they go; `commit()` compares
the hash with the expected digest (a mismatch deletes the temp file and raises
`DigestMismatch`), fsyncs, and renames into place. Rename is atomic, so concurrent writers of
the same digest are harmless: the last rename wins with identical content. Readers never see a
partial blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

from worker.images.errors import DigestMismatch, ImageError
from worker.images.reference import is_sha256_digest

COPY_CHUNK = 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    if not is_sha256_digest(digest):
        raise ImageError(f"unsupported or malformed digest {digest!r} (only sha256 is supported)")
    return digest


class BlobWriter:
    """One blob being written. Use as a context manager: an exception aborts it."""

    def __init__(self, store: BlobStore, expected: str | None, what: str) -> None:
        self._store = store
        self._expected = check_digest(expected) if expected else None
        self._what = what
        fd, name = tempfile.mkstemp(prefix="blob-", dir=store.tmp_dir)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise ImageError("blob writer already closed")
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def commit(self) -> str:
        if self._file is None:
            raise ImageError("blob writer already closed")
        digest = "sha256:" + self._hash.hexdigest()
        if self._expected is not None and digest != self._expected:
            self.abort()
            raise DigestMismatch(self._what, self._expected, digest)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self._store.path(digest))
        return digest

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None or self._file is not None:
            self.abort()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "blobs" / "sha256"
        self.tmp_dir = root / "tmp"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.dir / check_digest(digest).removeprefix("sha256:")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def writer(self, expected: str | None = None, what: str = "blob") -> BlobWriter:
        return BlobWriter(self, expected, what)

    def put_bytes(self, data: bytes, expected: str | None = None, what: str = "blob") -> str:
        with self.writer(expected, what) as w:
            w.write(data)
            return w.commit()

    def read_bytes(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"blob {digest} is missing from the store") from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise ImageError(f"blob {digest} is missing from the store") from None

    def digests(self) -> Iterator[str]:
        for entry in os.scandir(self.dir):
            yield "sha256:" + entry.name

    def delete(self, digest: str) -> int:
        """Remove a blob; returns the bytes freed (0 if it was absent)."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def clear_tmp(self) -> None:
        """Drop temp files a crash left behind (called at store start, before any writer)."""
        for entry in os.scandir(self.tmp_dir):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


class KeyedLocks:
    """One asyncio.Lock per key (a digest or chain ID), dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
