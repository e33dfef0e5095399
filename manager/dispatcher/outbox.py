"""Per-node outboxes: messages other leader components push into a node's session stream.

Theory of operation: the session stream is the only way a manager reaches an agent (agents do
not listen). While a node's session is open it has one outbox, keyed by the session's ID, so a
superseded session cannot close its successor's outbox. `send(node_id, message)` queues a
message and answers False when the node has no open session or its outbox is full (the caller
reports the node as unavailable rather than waiting). `merge_outbox` interleaves the outbox with
the assignment stream: the stream's first message (the session hello) always goes first. When
a session ends its outbox is dropped and every `on_closed` listener hears the node ID, so
nobody waits for an answer that can no longer come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

log = logging.getLogger("shoal.dispatcher")

OUTBOX_LIMIT = 1000


class NodeOutboxes:
    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self._limit = limit
        self._boxes: dict[str, tuple[str, asyncio.Queue[dict[str, Any]]]] = {}   # node_id -> (session, queue)
        self._listeners: list[Callable[[str], None]] = []

    def open(self, node_id: str, session_id: str) -> asyncio.Queue[dict[str, Any]]:
        previous = self._boxes.get(node_id)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._limit)
        self._boxes[node_id] = (session_id, queue)
        if previous is not None:
            self._notify(node_id)    # what was queued for the old session is lost with it
        return queue

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
        try:
            box[1].put_nowait(message)
        except asyncio.QueueFull:
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


async def merge_outbox(stream: AsyncIterator[dict[str, Any]],
                       outbox: asyncio.Queue[dict[str, Any]]) -> AsyncGenerator[dict[str, Any], None]:
    """The stream's first message, then the stream's and the outbox's messages as they come.
    The two pending reads are owned here and cancelled when the consumer stops."""
    yield await anext(stream)
    next_item: asyncio.Task[dict[str, Any]] | None = None
    next_sent: asyncio.Task[dict[str, Any]] | None = None
    try:
        while True:
            if next_item is None:
                next_item = asyncio.ensure_future(anext(stream))
            if next_sent is None:
                next_sent = asyncio.ensure_future(outbox.get())
            done, _ = await asyncio.wait({next_item, next_sent}, return_when=asyncio.FIRST_COMPLETED)
            if next_sent in done:
                message, next_sent = next_sent.result(), None
                yield message
            if next_item in done:
                try:
                    message = next_item.result()
                except StopAsyncIteration:
                    return
                finally:
                    next_item = None
                yield message
    finally:
        for pending in (next_item, next_sent):
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
