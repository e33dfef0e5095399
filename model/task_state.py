"""Task states as an ordered enum, and the table of legal moves.

Invariant: a task's observed state (written by the worker) and its desired state (written
by managers) only ever increase in the order below. `TaskStatus.advance` refuses a backwards
move with `IllegalTransition` and leaves the status unchanged. Staying in the same state is
allowed (an idempotent re-report, possibly with a new message).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class TaskState(enum.IntEnum):
    NEW = 0
    PENDING = 64
    ASSIGNED = 192
    ACCEPTED = 256
    PREPARING = 320
    READY = 384
    STARTING = 448
    RUNNING = 512
    COMPLETE = 576
    SHUTDOWN = 640
    FAILED = 704
    REJECTED = 768
    REMOVE = 800
    ORPHANED = 832

    # Per member, set once below (plain attributes: an Enum property costs ~250 ns a read).
    api: str  # the Engine API spelling ("running")
    is_terminal: bool  # past running: the task will never run (again)

    @classmethod
    def from_api(cls, text: str) -> TaskState:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown task state {text!r}") from None


for _state in TaskState:
    _state.api = _state.name.lower()
    _state.is_terminal = _state > TaskState.RUNNING
del _state


class IllegalTransition(ValueError):
    """A move a state table does not allow: here a task state moving backwards (the update and
    node state tables raise subclasses of it)."""


# The states each state may move to: itself and every later state.
LEGAL_MOVES: dict[TaskState, frozenset[TaskState]] = {
    state: frozenset(s for s in TaskState if s >= state) for state in TaskState
}


def check_transition(current: TaskState, new: TaskState, what: str = "state") -> None:
    if new not in LEGAL_MOVES[current]:
        raise IllegalTransition(f"task {what} cannot move from {current.api} back to {new.api}")


@dataclass(slots=True)
class TaskStatus:
    """What the worker (or, for new/pending/assigned/orphaned, the manager) observed."""

    state: TaskState = TaskState.NEW
    timestamp: str = ""
    message: str = ""
    err: str = ""
    container_status: dict[str, Any] | None = None
    port_status: dict[str, Any] | None = None

    def advance(self, state: TaskState, timestamp: str, message: str = "", err: str = "",
                container_status: dict[str, Any] | None = None,
                port_status: dict[str, Any] | None = None) -> None:
        """Move to `state` (same or later). A backwards move raises and changes nothing.
        Container and port status are replaced only when given."""
        check_transition(self.state, state)
        self.state = state
        self.timestamp = timestamp
        self.message = message
        self.err = err
        if container_status is not None:
            self.container_status = container_status
        if port_status is not None:
            self.port_status = port_status

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Timestamp": self.timestamp, "State": self.state.api, "Message": self.message}
        if self.err:
            out["Err"] = self.err
        if self.container_status is not None:
            out["ContainerStatus"] = self.container_status
        out["PortStatus"] = self.port_status if self.port_status is not None else {}
        return out

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> TaskStatus:
        return cls(
            state=TaskState.from_api(data.get("State", "new")),
            timestamp=data.get("Timestamp", ""),
            message=data.get("Message", ""),
            err=data.get("Err", ""),
            container_status=data.get("ContainerStatus"),
            port_status=data.get("PortStatus") or None,
        )

    def to_record(self) -> list[Any]:
        return [int(self.state), self.timestamp, self.message, self.err, self.container_status,
                self.port_status]

    @classmethod
    def from_record(cls, rec: list[Any]) -> TaskStatus:
        return cls(TaskState(rec[0]), rec[1], rec[2], rec[3], rec[4], rec[5])
