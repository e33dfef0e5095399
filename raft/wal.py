"""Append-only write-ahead log in numbered segment files.

Layout: `<dir>/<seq:016d>.wal`, appended in order; the highest sequence number is the active segment.
Each record is `u32 body_len | u32 crc32(body) | body`, where `body = kind (1 byte) | payload`:

- ENTRY: an encoded `Entry`. An entry at index i replaces every entry >= i seen before it (this is how a
  follower's conflicting suffix is overwritten: the new entries are simply appended, and replay applies
  the same rule), so truncation is exactly as durable as the append that causes it.
- HARD_STATE: an encoded `HardState`; the greatest one wins (term, then vote, then commit only grow).
- SNAPSHOT: an encoded (index, term) marker written when a snapshot is installed: replay keeps the
  entries after it only if the log holds (index, term), otherwise the log restarts at the snapshot.

Encryption at rest is injected: given a `RecordCipher`, every payload is written sealed and its kind
carries the SEALED bit; replay opens sealed payloads with the cipher and reads plain ones as they are,
so a log written before encryption was turned on still opens. The CRC covers the sealed bytes.

Invariants: nothing is acknowledged before `sync()` returned (fdatasync through an injectable hook);
a segment only becomes non-active after it was synced, so only the active (last) segment can have a
torn tail. Opening the log truncates a torn tail (a short or bad record after which no valid record
exists) and refuses, naming the file and byte offset, to open a log with a bad record that is followed
by valid ones. `compact(index)` removes only a prefix of whole, inactive segments whose entries are all
<= index (they are covered by a snapshot).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgpack

from raft.codec import CodecError, decode_entry, decode_hard_state, encode_entry, encode_hard_state
from raft.types import Entry, HardState

DEFAULT_SEGMENT_SIZE = 64 << 20
MAX_RECORD_SIZE = 1 << 31       # a length field above this is garbage, not a record

KIND_ENTRY = 1
KIND_HARD_STATE = 2
KIND_SNAPSHOT = 3
_KINDS = (KIND_ENTRY, KIND_HARD_STATE, KIND_SNAPSHOT)
SEALED = 0x80                   # kind bit: the payload is encrypted with the injected cipher

_HEADER = struct.Struct(">II")

FsyncHook = Callable[[int], None]


class RecordCipher(Protocol):
    """Encryption at rest, injected by the owner of the log (raft itself knows no keys)."""

    def seal(self, plaintext: bytes) -> bytes:
        ...

    def open(self, sealed: bytes) -> bytes:
        """The plaintext; raises ValueError if `sealed` was not sealed with this cipher's key."""
        ...


class WALCorruptError(Exception):
    """A record in the middle of the log is damaged: refusing to start rather than dropping data."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"WAL corrupt: {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


def hard_state_key(hs: HardState) -> tuple[int, bool, int]:
    """Hard state only grows in this order over time, so the greatest record is the latest."""
    return (hs.term, hs.vote != 0, hs.commit)


def encode_record(kind: int, payload: bytes) -> bytes:
    body = bytes((kind,)) + payload
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


@dataclass
class ReplayedLog:
    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState | None = None
    snapshot_floor: tuple[int, int] | None = None   # (index, term) of the last SNAPSHOT marker
    truncated_bytes: int = 0                          # torn tail removed from the active segment


@dataclass
class _Segment:
    seq: int
    path: str
    size: int = 0
    max_index: int = 0


def _segment_name(seq: int) -> str:
    return f"{seq:016d}.wal"


def _parse_record_at(buf: bytes, off: int) -> tuple[int, bytes] | None:
    """The (kind, payload) of a valid record starting at `off`, else None."""
    if off + _HEADER.size > len(buf):
        return None
    length, crc = _HEADER.unpack_from(buf, off)
    start = off + _HEADER.size
    if length < 1 or length > MAX_RECORD_SIZE or start + length > len(buf):
        return None
    body = buf[start:start + length]
    if zlib.crc32(body) != crc or body[0] & ~SEALED not in _KINDS:
        return None
    return body[0], body[1:]


def _valid_record_after(buf: bytes, off: int) -> int | None:
    """The offset of the first valid record strictly after `off`, if any (decides torn vs corrupt)."""
    for pos in range(off + 1, len(buf) - _HEADER.size + 1):
        if _parse_record_at(buf, pos) is not None:
            return pos
    return None


class WAL:
    """A segmented log. Methods are synchronous and serialized by a lock; call them from one thread
    at a time or from a worker thread (the driver uses `asyncio.to_thread`)."""

    def __init__(self, directory: str, *, segment_size: int = DEFAULT_SEGMENT_SIZE,
                 fsync: FsyncHook | None = None, cipher: RecordCipher | None = None) -> None:
        if segment_size < 4096:
            raise ValueError(f"segment_size must be >= 4096 bytes, got {segment_size}")
        self.directory = directory
        self.segment_size = segment_size
        self._fsync: FsyncHook = fsync or os.fdatasync
        self._cipher = cipher
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._buffer: list[bytes] = []

    # -- opening and replay -------------------------------------------------------------------------

    def open(self) -> ReplayedLog:
        """Read every segment, repair a torn tail, and open the last segment for appending."""
        os.makedirs(self.directory, exist_ok=True)
        names = sorted(n for n in os.listdir(self.directory) if n.endswith(".wal"))
        result = ReplayedLog()
        for i, name in enumerate(names):
            try:
                seq = int(name[:-4])
            except ValueError:
                raise WALCorruptError(os.path.join(self.directory, name), 0,
                                      "segment name is not <number>.wal") from None
            seg = _Segment(seq=seq, path=os.path.join(self.directory, name))
            self._replay_segment(seg, result, is_last=(i == len(names) - 1))
            self._segments.append(seg)
        if not self._segments:
            self._segments.append(_Segment(seq=1, path=os.path.join(self.directory, _segment_name(1))))
        active = self._segments[-1]
        self._fd = os.open(active.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if not names:
            self._sync_dir()
        return result

    def _replay_segment(self, seg: _Segment, result: ReplayedLog, *, is_last: bool) -> None:
        with open(seg.path, "rb") as f:
            buf = f.read()
        off = 0
        while off < len(buf):
            rec = _parse_record_at(buf, off)
            if rec is None:
                following = _valid_record_after(buf, off)
                if following is not None or not is_last:
                    where = f"a valid record follows at offset {following}" if following is not None \
                        else "it is not the last segment"
                    raise WALCorruptError(seg.path, off, f"bad record (length/checksum) and {where}")
                result.truncated_bytes = len(buf) - off
                with open(seg.path, "r+b") as f:
                    f.truncate(off)
                    f.flush()
                    self._fsync(f.fileno())
                break
            kind, payload = rec
            try:
                self._apply_record(kind & ~SEALED, self._open_payload(kind, payload), seg, result)
            except CodecError as exc:
                raise WALCorruptError(seg.path, off, f"undecodable record: {exc}") from exc
            off += _HEADER.size + 1 + len(payload)
        seg.size = off

    def _open_payload(self, kind: int, payload: bytes) -> bytes:
        if not kind & SEALED:
            return payload
        if self._cipher is None:
            raise CodecError("the record is encrypted and the log was opened without a key")
        try:
            return self._cipher.open(payload)
        except ValueError as exc:
            raise CodecError(f"cannot decrypt the record: {exc}") from exc

    def _record(self, kind: int, payload: bytes) -> bytes:
        if self._cipher is None:
            return encode_record(kind, payload)
        return encode_record(kind | SEALED, self._cipher.seal(payload))

    @staticmethod
    def _apply_record(kind: int, payload: bytes, seg: _Segment, result: ReplayedLog) -> None:
        entries = result.entries
        if kind == KIND_ENTRY:
            e = decode_entry(payload)
            seg.max_index = max(seg.max_index, e.index)
            if entries:
                first = entries[0].index
                if e.index <= first:
                    entries.clear()     # replaces everything we hold
                elif e.index <= entries[-1].index:
                    del entries[e.index - first:]
                elif e.index != entries[-1].index + 1:
                    raise CodecError(f"entry {e.index} leaves a gap after {entries[-1].index}")
            elif result.snapshot_floor is not None and e.index <= result.snapshot_floor[0]:
                return
            entries.append(e)
        elif kind == KIND_HARD_STATE:
            hs = decode_hard_state(payload)
            if result.hard_state is None or hard_state_key(hs) >= hard_state_key(result.hard_state):
                result.hard_state = hs
        else:
            try:
                index, term = msgpack.unpackb(payload)
            except Exception as exc:
                raise CodecError(f"snapshot marker: {exc}") from exc
            keep_suffix = bool(entries) and entries[0].index <= index <= entries[-1].index \
                and entries[index - entries[0].index].term == term
            if keep_suffix:
                del entries[:index - entries[0].index + 1]
            else:
                entries.clear()
            result.snapshot_floor = (index, term)

    # -- appending -----------------------------------------------------------------------------------

    def append(self, hard_state: HardState | None = None, entries: Iterable[Entry] = (),
               snapshot_marker: tuple[int, int] | None = None) -> None:
        """Buffer records; nothing reaches the disk until `sync()`."""
        with self._lock:
            if snapshot_marker is not None:
                self._buffer.append(self._record(KIND_SNAPSHOT, msgpack.packb(list(snapshot_marker))))
            for e in entries:
                self._buffer.append(self._record(KIND_ENTRY, encode_entry(e)))
                seg = self._segments[-1]
                seg.max_index = max(seg.max_index, e.index)
            if hard_state is not None:
                self._buffer.append(self._record(KIND_HARD_STATE, encode_hard_state(hard_state)))

    def sync(self) -> None:
        """Write the buffered records and fdatasync them; roll to a new segment when full."""
        with self._lock:
            if self._fd is None:
                raise RuntimeError("WAL is not open")
            if self._buffer:
                data = b"".join(self._buffer)
                self._buffer.clear()
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                self._fsync(self._fd)
                self._segments[-1].size += len(data)
            if self._segments[-1].size >= self.segment_size:
                self._roll()

    def save(self, hard_state: HardState | None = None, entries: Iterable[Entry] = (),
             snapshot_marker: tuple[int, int] | None = None) -> None:
        self.append(hard_state, entries, snapshot_marker)
        self.sync()

    def _roll(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        seg = _Segment(seq=self._segments[-1].seq + 1,
                       path=os.path.join(self.directory, _segment_name(self._segments[-1].seq + 1)))
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        self._segments.append(seg)
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    # -- compaction and lifecycle ---------------------------------------------------------------------

    def compact(self, index: int) -> list[str]:
        """Delete the leading inactive segments whose entries are all <= `index`; returns their paths."""
        removed: list[str] = []
        with self._lock:
            while len(self._segments) > 1 and self._segments[0].max_index <= index:
                seg = self._segments.pop(0)
                os.unlink(seg.path)
                removed.append(seg.path)
            if removed:
                self._sync_dir()
        return removed

    def segment_paths(self) -> list[str]:
        with self._lock:
            return [s.path for s in self._segments]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
