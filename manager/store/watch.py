"""Store events and bounded watch subscriptions.

Invariant: a subscription holds at most `limit` undelivered events. One more and it is
dropped: its queue is cleared, the store forgets it, and reading from it raises
`WatchDropped`, so the watcher knows to take a fresh snapshot (`view_and_watch`) and resync.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from manager.store.errors import WatchDropped


@dataclass(frozen=True, slots=True)
class Event:
    op: str  # "create" | "update" | "delete"
    table: str
    obj: Any  # the object after the change (for delete: as it was)
    old: Any = None  # the object before an update
    index: int = 0  # the store index of the entry that made the change


class Subscription:
    def __init__(self, predicate: Callable[[Event], bool] | None, limit: int,
                 on_close: Callable[[Subscription], None]) -> None:
        self._predicate = predicate
        self._limit = limit
        self._queue: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._on_close = on_close
        self.dropped_reason = ""
        self.closed = False

    def wants(self, event: Event) -> bool:
        return self._predicate is None or self._predicate(event)

    def push(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._queue) >= self._limit:
            self.drop(f"watch queue overflowed ({self._limit} events pending); resync from a new snapshot")
            return
        self._queue.append(event)
        self._wakeup.set()

    def drop(self, reason: str) -> None:
        self.dropped_reason = reason
        self._queue.clear()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close(self)
        self._wakeup.set()

    def _raise_if_dropped(self) -> None:
        if self.dropped_reason:
            raise WatchDropped(self.dropped_reason)

    def pending(self) -> int:
        return len(self._queue)

    def drain(self) -> list[Event]:
        """All events queued now, without waiting. Raises WatchDropped if dropped."""
        self._raise_if_dropped()
        events = list(self._queue)
        self._queue.clear()
        self._wakeup.clear()
        return events

    async def wait(self) -> None:
        """Until at least one event is queued (or the subscription ends)."""
        while not self._queue and not self.closed:
            self._wakeup.clear()
            await self._wakeup.wait()
        self._raise_if_dropped()

    async def get(self) -> Event:
        await self.wait()
        if not self._queue:
            raise StopAsyncIteration
        event = self._queue.popleft()
        return event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.get()
