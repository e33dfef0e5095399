"""Per-node outboxes: messages other leader components push into a node's session stream.

Theory of operation: the session stream is the only way a manager reaches an agent (agents do
not listen). While a node's session is open it has one outbox, keyed by the session's ID, so a
superseded session cannot close its successor's outbox. `send(node_id, message)` queues a
message and answers False when the node has no open session or its outbox is full (the caller
reports the node as unavailable rather than waiting). The session's assignment stream
(assignments.py) sends what is queued between its own messages, after the session hello; the
outbox wakes it through the event it shares with the stream's store subscription, so one wait
serves both. When a session ends its outbox is dropped and every `on_closed` listener hears
the node ID, so nobody waits for an answer that can no longer come.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("shoal.dispatcher")

OUTBOX_LIMIT = 1000


class Outbox:
    """A bounded queue of messages for one session, with the event that wakes its stream."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._messages: deque[dict[str, Any]] = deque()
        self.wakeup = asyncio.Event()

    def put(self, message: dict[str, Any]) -> bool:
        if len(self._messages) >= self._limit:
            return False
        self._messages.append(message)
        self.wakeup.set()
        return True

    def pending(self) -> int:
        return len(self._messages)

    def take(self) -> list[dict[str, Any]]:
        """Every queued message, oldest first."""
        messages = list(self._messages)
        self._messages.clear()
        return messages


class NodeOutboxes:
    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self._limit = limit
        self._boxes: dict[str, tuple[str, Outbox]] = {}   # node_id -> (session, outbox)
        self._listeners: list[Callable[[str], None]] = []

    def open(self, node_id: str, session_id: str) -> Outbox:
        previous = self._boxes.get(node_id)
        outbox = Outbox(self._limit)
        self._boxes[node_id] = (session_id, outbox)
        if previous is not None:
            self._notify(node_id)    # what was queued for the old session is lost with it
        return outbox

    def close(self, node_id: str, session_id: str) -> None:
        current = self._boxes.get(node_id)
        if current is None or current[0] != session_id:
            return
        del self._boxes[node_id]
        self._notify(node_id)

    def connected(self, node_id: str) -> bool:
        return node_id in self._boxes

    def send(self, node_id: str, message: dict[str, Any]) -> bool:
        box = self._boxes.get(node_id)
        if box is None:
            return False
        if not box[1].put(message):
            log.warning("outbox full; message dropped", extra={"node": node_id, "kind": message.get("kind")})
            return False
        return True

    def on_closed(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def _notify(self, node_id: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(node_id)
            except Exception:
                log.exception("outbox close listener failed")
