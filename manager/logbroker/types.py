"""Plain data of the log broker and how it crosses the cluster port.

A `LogSelector` names what to read (services and/or tasks); `LogOptions` how (follow, tail,
since). A subscription delivers `LogRecord`s (one log line with the node, service and task it
came from) and `LogWarning`s (a part of the stream that could not be read, e.g. a node that is
not connected). `from_wire` functions check their input and raise `ValueError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LogSelector:
    service_ids: tuple[str, ...] = ()
    task_ids: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"services": list(self.service_ids), "tasks": list(self.task_ids)}

    @staticmethod
    def from_wire(doc: Any) -> LogSelector:
        if not isinstance(doc, dict):
            raise ValueError("log selector: expected a map")
        return LogSelector(_strings(doc.get("services"), "services"), _strings(doc.get("tasks"), "tasks"))


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    tail: int | None = None          # the last N lines of each task (None: all)
    since: float | None = None       # Unix seconds; only lines written at or after it

    def to_wire(self) -> dict[str, Any]:
        return {"follow": self.follow, "tail": self.tail, "since": self.since}

    @staticmethod
    def from_wire(doc: Any) -> LogOptions:
        if not isinstance(doc, dict):
            raise ValueError("log options: expected a map")
        tail, since = doc.get("tail"), doc.get("since")
        if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
            raise ValueError(f"log options: tail must be a non-negative integer, not {tail!r}")
        if since is not None and not isinstance(since, (int, float)):
            raise ValueError(f"log options: since must be a number of seconds, not {since!r}")
        return LogOptions(bool(doc.get("follow")), tail, None if since is None else float(since))


@dataclass(frozen=True)
class LogRecord:
    node_id: str
    service_id: str
    task_id: str
    timestamp: str          # RFC3339Nano as the node's log wrote it
    stream: str             # "stdout" | "stderr"
    message: bytes          # without the trailing newline

    def to_wire(self) -> dict[str, Any]:
        return {"node": self.node_id, "service": self.service_id, "task": self.task_id,
                "ts": self.timestamp, "stream": self.stream, "msg": self.message}


@dataclass(frozen=True)
class LogWarning:
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"warning": self.message}


LogItem = LogRecord | LogWarning


def item_from_wire(doc: Any) -> LogItem:
    if not isinstance(doc, dict):
        raise ValueError("log item: expected a map")
    if "warning" in doc:
        return LogWarning(str(doc["warning"]))
    return LogRecord(str(doc.get("node", "")), str(doc.get("service", "")), str(doc.get("task", "")),
                     str(doc.get("ts", "")), stream_name(doc.get("stream")), message_bytes(doc.get("msg")))


def entry_from_wire(doc: Any) -> tuple[str, str, bytes]:
    """One entry of an agent's `logs.publish` batch: (timestamp, stream, message)."""
    if not isinstance(doc, dict):
        raise ValueError("log entry: expected a map")
    return str(doc.get("ts", "")), stream_name(doc.get("stream")), message_bytes(doc.get("msg"))


def stream_name(value: Any) -> str:
    if value not in ("stdout", "stderr"):
        raise ValueError(f"log entry: stream must be stdout or stderr, not {value!r}")
    return str(value)


def message_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise ValueError(f"log entry: msg must be bytes, not {type(value).__name__}")


def _strings(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"log selector: {field} must be a list of IDs")
    return tuple(value)
