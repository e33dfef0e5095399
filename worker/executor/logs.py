"""Container logs: conmon's k8s-file format in, Engine API multiplexed frames out.

Theory of operation: conmon writes one line per chunk of output,
`<RFC3339Nano> <stdout|stderr> <F|P> <message>`, where P marks a partial line continued by the
next record of the same stream. `parse_line` and `LineAssembler` (pure) turn records into whole
log entries; `frame` and `format_entry` (pure) build the `[stream,0,0,0,len32be] + payload`
frames `docker logs`/`docker service logs` read, optionally with the timestamp and the details
("k=v,..." context) prefixes. `read_log` is the only I/O: it reads a file (with `tail`) and, when
following, polls it for growth until the caller's `finished()` says the container has exited and
the file is drained; the caller ends an earlier follow by cancelling.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from engineapi.logframes import STDERR, STDOUT, details_text, frame

FOLLOW_POLL_INTERVAL = 0.1


class LogFormatError(ValueError):
    pass


@dataclass(frozen=True)
class LogEntry:
    timestamp: str        # RFC3339Nano as conmon wrote it
    stream: str           # "stdout" | "stderr"
    message: bytes        # without the trailing newline
    partial: bool = False

    @property
    def stream_id(self) -> int:
        return STDERR if self.stream == "stderr" else STDOUT


def timestamp_seconds(ts: str) -> float:
    """RFC3339 with up to nanoseconds ("2026-01-02T03:04:05.123456789+00:00" or "...Z") →
    Unix seconds; nanoseconds are cut to microseconds."""
    text = ts.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise LogFormatError(f"bad log timestamp {ts!r}") from None


def parse_line(line: bytes) -> LogEntry:
    """One k8s-file record (without its newline)."""
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        raise LogFormatError(f"log record has {len(parts)} fields, want 4: {line[:80]!r}")
    ts, stream, tag = parts[0], parts[1], parts[2]
    if stream not in (b"stdout", b"stderr"):
        raise LogFormatError(f"log record stream {stream!r} is not stdout or stderr")
    if tag not in (b"F", b"P"):
        raise LogFormatError(f"log record tag {tag!r} is not F or P")
    message = parts[3] if len(parts) == 4 else b""
    return LogEntry(ts.decode(), stream.decode(), message, partial=tag == b"P")


class LineAssembler:
    """Joins partial (P) records with their continuation, per stream."""

    def __init__(self) -> None:
        self._pending: dict[str, LogEntry] = {}

    def feed(self, record: LogEntry) -> LogEntry | None:
        head = self._pending.pop(record.stream, None)
        if head is not None:
            record = LogEntry(head.timestamp, record.stream, head.message + record.message,
                              partial=record.partial)
        if record.partial:
            self._pending[record.stream] = record
            return None
        return record

    def flush(self) -> list[LogEntry]:
        out = list(self._pending.values())
        self._pending.clear()
        return out


def format_entry(entry: LogEntry, *, timestamps: bool = False,
                 details: dict[str, str] | None = None, raw: bool = False) -> bytes:
    """The frame for one entry: `[<timestamp> ][<details> ]<message>\\n` (unframed when `raw`: a TTY's)."""
    prefix = b""
    if timestamps:
        prefix += entry.timestamp.encode() + b" "
    if details is not None:
        prefix += details_text(details).encode() + b" "
    line = prefix + entry.message + b"\n"
    return line if raw else frame(entry.stream_id, line)


def _records(chunk: bytes, assembler: LineAssembler, since: float | None = None) -> list[LogEntry]:
    out = []
    for raw in chunk.split(b"\n"):
        if not raw:
            continue
        try:
            entry = assembler.feed(parse_line(raw))
        except LogFormatError:
            continue   # a torn record; conmon only appends whole ones
        if entry is not None and (since is None or _not_before(entry, since)):
            out.append(entry)
    return out


def _not_before(entry: LogEntry, since: float) -> bool:
    try:
        return timestamp_seconds(entry.timestamp) >= since
    except LogFormatError:
        return True


async def read_log(path: Path, *, tail: int | None = None, follow: bool = False,
                   finished: Callable[[], bool] = lambda: True, since: float | None = None,
                   poll_interval: float = FOLLOW_POLL_INTERVAL) -> AsyncIterator[LogEntry]:
    """Entries of the log at `path` (written at or after `since`, Unix seconds): the last
    `tail` ones (None: all), then, with `follow`, new ones as they are written until
    `finished()` holds and everything written is read."""
    assembler = LineAssembler()
    # The file is opened once and read on from that descriptor: a container removed while it is
    # followed takes its log file with it, and what was written after the last read is still
    # read (docker-py's `run(remove=True)` reads its follow stream only after the remove).
    log_file: BinaryIO | None = None

    def read_new() -> bytes:
        nonlocal log_file
        if log_file is None:
            try:
                log_file = open(path, "rb")     # held across reads, closed below
            except FileNotFoundError:
                return b""
        return log_file.read()

    try:
        async for entry in _entries(read_new, assembler, tail=tail, follow=follow, finished=finished,
                                    since=since, poll_interval=poll_interval):
            yield entry
    finally:
        if log_file is not None:
            log_file.close()


async def _entries(read_new: Callable[[], bytes], assembler: LineAssembler, *, tail: int | None, follow: bool,
                   finished: Callable[[], bool], since: float | None,
                   poll_interval: float) -> AsyncIterator[LogEntry]:
    data = await asyncio.to_thread(read_new)
    cut = data.rfind(b"\n") + 1
    data, rest = data[:cut], data[cut:]
    first = _records(data, assembler, since)
    if not follow:
        first += assembler.flush()       # a partial line so far is still output
    if tail is not None:
        first = list(deque(first, maxlen=tail)) if tail > 0 else []
    for entry in first:
        yield entry
    if not follow:
        return
    while True:
        done = finished()          # checked before reading: whatever was written by then is read
        data = rest + await asyncio.to_thread(read_new)
        cut = data.rfind(b"\n") + 1
        data, rest = data[:cut], data[cut:]
        for entry in _records(data, assembler, since):
            yield entry
        if done:
            for entry in assembler.flush():
                yield entry
            return
        await asyncio.sleep(poll_interval)


