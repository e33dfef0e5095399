"""Durable Raft state on disk: the WAL, the latest snapshot, and a hard-state checkpoint.

Layout under `data_dir`: `wal/` (see raft/wal.py), `snapshot` (the newest `Snapshot`, encoded) and
`hardstate` (a `HardState` checkpoint written when WAL segments are compacted away, because those
segments may have held the newest hard-state record). Both files are replaced atomically: write a
temporary file, fsync it, rename it over the old one, fsync the directory. A reader therefore sees the
old or the new file, never a mix.

`persist(...)` is the driver's entry point and does group commit: callers that arrive while a write +
fsync is running are gathered into the next one, so N concurrent callers cost far fewer than N fsyncs.
Nothing returns before its bytes are synced. A snapshot installed from the leader is written before
the WAL marker that resets the log to it.

With a `cipher` (encryption at rest, see raft/wal.py's `RecordCipher`), the WAL's records and both
files are written sealed; the files then start with `SEALED_FILE_MAGIC`. Plain files and records are
still read, so a data dir written without a cipher opens with one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from raft.codec import CodecError, decode_hard_state, decode_snapshot, encode_hard_state, encode_snapshot
from raft.types import Entry, HardState, Snapshot
from raft.wal import DEFAULT_SEGMENT_SIZE, WAL, FsyncHook, RecordCipher, WALCorruptError, hard_state_key

_T = TypeVar("_T")

SNAPSHOT_FILE = "snapshot"
HARD_STATE_FILE = "hardstate"
SEALED_FILE_MAGIC = b"shoal-sealed-1\n"


class StorageCorruptError(Exception):
    """A snapshot or hard-state file, or the log relative to them, is inconsistent."""


@dataclass
class LoadedState:
    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: list[Entry]


def atomic_write(path: str, data: bytes, fsync: FsyncHook = os.fsync) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        fsync(dfd)
    finally:
        os.close(dfd)


class DiskStorage:
    def __init__(self, data_dir: str, *, segment_size: int = DEFAULT_SEGMENT_SIZE,
                 fsync: FsyncHook | None = None, inline_sync_bytes: int = 0,
                 cipher: RecordCipher | None = None) -> None:
        """`inline_sync_bytes`: batches below this many entry bytes are written and fsynced on the
        calling thread (blocking the event loop for one fsync) instead of on a worker thread.
        `cipher`: encrypt the log, the snapshot and the checkpoint at rest."""
        self.data_dir = data_dir
        self.inline_sync_bytes = inline_sync_bytes
        self._fsync: FsyncHook = fsync or os.fsync
        self._cipher = cipher
        self.wal = WAL(os.path.join(data_dir, "wal"), segment_size=segment_size, fsync=fsync, cipher=cipher)
        self._pending: list[tuple[HardState | None, Sequence[Entry], Snapshot | None]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing = False
        self.snapshot: Snapshot | None = None
        self._last_hard_state: HardState | None = None

    # -- loading -----------------------------------------------------------------------------------

    def load(self) -> LoadedState:
        os.makedirs(self.data_dir, exist_ok=True)
        for leftover in (SNAPSHOT_FILE, HARD_STATE_FILE):
            tmp = os.path.join(self.data_dir, leftover + ".tmp")
            if os.path.exists(tmp):
                os.unlink(tmp)      # an interrupted atomic write; the real file is intact
        snapshot = self._read_file(SNAPSHOT_FILE, decode_snapshot)
        checkpoint = self._read_file(HARD_STATE_FILE, decode_hard_state)
        replay = self.wal.open()
        hs = replay.hard_state
        if checkpoint is not None and (hs is None or hard_state_key(checkpoint) > hard_state_key(hs)):
            hs = checkpoint
        entries = replay.entries
        if snapshot is not None:
            entries = [e for e in entries if e.index > snapshot.meta.index]
            if entries and entries[0].index != snapshot.meta.index + 1:
                raise StorageCorruptError(
                    f"{self.wal.directory}: log resumes at index {entries[0].index} but the snapshot "
                    f"in {os.path.join(self.data_dir, SNAPSHOT_FILE)} ends at {snapshot.meta.index}")
        self.snapshot = snapshot
        self._last_hard_state = hs
        return LoadedState(hard_state=hs, snapshot=snapshot, entries=entries)

    def _read_file(self, name: str, decode: Callable[[bytes], _T]) -> _T | None:
        path = os.path.join(self.data_dir, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        if data.startswith(SEALED_FILE_MAGIC):
            if self._cipher is None:
                raise StorageCorruptError(f"{path}: the file is encrypted and the storage has no key")
            try:
                data = self._cipher.open(data[len(SEALED_FILE_MAGIC):])
            except ValueError as exc:
                raise StorageCorruptError(f"{path}: cannot decrypt: {exc}") from exc
        try:
            return decode(data)
        except CodecError as exc:
            raise StorageCorruptError(f"{path}: {exc}") from exc

    def _sealed(self, data: bytes) -> bytes:
        return data if self._cipher is None else SEALED_FILE_MAGIC + self._cipher.seal(data)

    # -- writing -----------------------------------------------------------------------------------

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None = None) -> None:
        """Synchronously and durably record one Ready's state (a snapshot first, then the log)."""
        self._write_batch([(hard_state, entries, snapshot)])

    def _write_batch(self, batch: list[tuple[HardState | None, Sequence[Entry], Snapshot | None]]) -> None:
        for hs, entries, snapshot in batch:
            if snapshot is not None:
                self._write_snapshot_file(snapshot)
                self.wal.append(snapshot_marker=(snapshot.meta.index, snapshot.meta.term))
            self.wal.append(hs, entries)
            if hs is not None:
                self._last_hard_state = hs
        self.wal.sync()

    def append_unsynced(self, hard_state: HardState) -> None:
        """Record a hard state whose loss is harmless (only the commit index moved); it reaches the
        disk with the next synced write."""
        self.wal.append(hard_state)
        self._last_hard_state = hard_state

    async def persist(self, hard_state: HardState | None, entries: Sequence[Entry],
                      snapshot: Snapshot | None = None, *, allow_inline: bool = True) -> None:
        """Durably record state; concurrent callers share one write + fsync (group commit).
        `allow_inline=False` keeps the event loop free during the fsync (e.g. to flush sockets)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((hard_state, entries, snapshot))
        self._waiters.append(fut)
        if not self._flushing:
            # This caller flushes batches until none is left; every caller (itself included)
            # learns its outcome from its own future.
            self._flushing = True
            inflight: list[asyncio.Future[None]] = []
            try:
                while self._pending:
                    batch, inflight = self._pending, self._waiters
                    self._pending, self._waiters = [], []
                    try:
                        size = sum(len(e.data) for _, ents, _ in batch for e in ents)
                        if allow_inline and size < self.inline_sync_bytes \
                                and not any(snap for _, _, snap in batch):
                            self._write_batch(batch)        # small: cheaper than a thread hop
                        else:
                            await asyncio.to_thread(self._write_batch, batch)
                    except Exception as exc:
                        for w in inflight:
                            if not w.done():
                                w.set_exception(exc)
                    else:
                        for w in inflight:
                            if not w.done():
                                w.set_result(None)
                    inflight = []
            except BaseException:
                # Cancelled mid-write: the outcome of the batches is unknown to their callers.
                for w in inflight + self._waiters:
                    if w is not fut and not w.done():
                        w.set_exception(RuntimeError("storage write interrupted"))
                self._pending, self._waiters = [], []
                fut.cancel()
                raise
            finally:
                self._flushing = False
        await fut

    def _write_snapshot_file(self, snapshot: Snapshot) -> None:
        if self.snapshot is not None and snapshot.meta.index <= self.snapshot.meta.index:
            return
        atomic_write(os.path.join(self.data_dir, SNAPSHOT_FILE), self._sealed(encode_snapshot(snapshot)),
                     self._fsync)
        self.snapshot = snapshot

    def write_hard_state_checkpoint(self, hs: HardState) -> None:
        atomic_write(os.path.join(self.data_dir, HARD_STATE_FILE), self._sealed(encode_hard_state(hs)),
                     self._fsync)

    def save_snapshot(self, snapshot: Snapshot) -> list[str]:
        """Store a locally taken snapshot atomically, then drop the WAL segments it covers."""
        self._write_snapshot_file(snapshot)
        if self._last_hard_state is not None:
            self.write_hard_state_checkpoint(self._last_hard_state)
        return self.wal.compact(snapshot.meta.index)

    async def save_snapshot_async(self, snapshot: Snapshot) -> list[str]:
        return await asyncio.to_thread(self.save_snapshot, snapshot)

    def close(self) -> None:
        self.wal.close()


__all__ = ["DiskStorage", "LoadedState", "RecordCipher", "StorageCorruptError", "WALCorruptError", "atomic_write"]
