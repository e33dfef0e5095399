"""Store events, bounded watch subscriptions, and fan-outs that route events by key.

Invariant: a subscription holds at most `limit` undelivered events. One more and it is
dropped: its queue is cleared, the store forgets it, and reading from it raises
`WatchDropped`, so the watcher knows to take a fresh snapshot (`view_and_watch`) and resync.

A `Fanout` is one store listener for many subscribers that each care about one key (the
dispatcher: one per node). The store hands it each event of its tables once; it asks
`keys_of(event)` which keys the event concerns and pushes it to those keys' subscriptions
only, so an event costs O(keys it names), not O(subscribers). Subscribing takes no await,
so a snapshot followed by `subscribe` is atomic like `view_and_watch`. A fan-out is attached
to the store only while it has subscriptions.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from manager.store.errors import WatchDropped

BROADCAST = "\x00all"  # a key that names every subscription of a fan-out


@dataclass(slots=True)  # not frozen (a frozen init is several times slower); never modify one
class Event:
    op: str  # "create" | "update" | "delete"
    table: str
    obj: Any  # the object after the change (for delete: as it was)
    old: Any = None  # the object before an update
    index: int = 0  # the store index of the entry that made the change


class Subscription:
    def __init__(self, predicate: Callable[[Event], bool] | None, limit: int,
                 on_close: Callable[[Subscription], None], tables: Iterable[str] = (),
                 wakeup: asyncio.Event | None = None) -> None:
        """wakeup: an event to set when an event is queued, if the watcher waits on it together
        with other sources (it then checks `pending()` itself)."""
        if limit < 1:
            raise ValueError(f"watch limit must be >= 1, not {limit}")
        self._predicate = predicate
        self.tables = frozenset(tables)  # empty: every table
        self._limit = limit
        self._queue: deque[Event] = deque()
        self._wakeup = wakeup if wakeup is not None else asyncio.Event()
        self._on_close = on_close
        self.dropped_reason = ""
        self.closed = False

    def offer(self, event: Event) -> None:
        """Queue `event` if this subscription wants it (the store calls this per event)."""
        if self._predicate is None or self._predicate(event):
            self.push(event)

    def offer_all(self, events: list[Event]) -> None:
        """Queue those of `events` this subscription wants (one entry's events of its tables)."""
        if self._predicate is not None:
            events = [event for event in events if self._predicate(event)]
        if self.closed or not events:
            return
        if len(self._queue) + len(events) > self._limit:
            self.drop(f"watch queue overflowed ({self._limit} events pending); resync from a new snapshot")
            return
        self._queue.extend(events)
        self._wakeup.set()

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


class Fanout:
    """Routes each event of `tables` to the subscriptions of the keys `keys_of(event)` returns
    (BROADCAST: to all). Each keyed subscription is an ordinary bounded `Subscription`."""

    def __init__(self, tables: Iterable[str], keys_of: Callable[[Event], Iterable[str]], limit: int,
                 attach: Callable[[Fanout], None], detach: Callable[[Fanout], None]) -> None:
        self.tables = frozenset(tables)
        if not self.tables:
            raise ValueError("a fan-out needs at least one table")
        self._keys_of = keys_of
        self._limit = limit
        self._attach = attach
        self._detach = detach
        self._by_key: dict[str, list[Subscription]] = {}

    def subscribe(self, key: str, limit: int | None = None, wakeup: asyncio.Event | None = None) -> Subscription:
        """A subscription to every later event whose keys include `key` (or BROADCAST)."""
        if key == BROADCAST:
            raise ValueError("cannot subscribe to the broadcast key itself")
        sub = Subscription(None, limit or self._limit, functools.partial(self._unsubscribe, key), self.tables,
                           wakeup)
        if not self._by_key:
            self._attach(self)
        self._by_key.setdefault(key, []).append(sub)
        return sub

    def subscribers(self) -> int:
        return sum(len(subs) for subs in self._by_key.values())

    def _unsubscribe(self, key: str, sub: Subscription) -> None:
        subs = self._by_key.get(key)
        if subs is None or sub not in subs:
            return
        subs.remove(sub)
        if not subs:
            del self._by_key[key]
            if not self._by_key:
                self._detach(self)

    def offer_all(self, events: list[Event]) -> None:
        """The store hands over one entry's events of this fan-out's tables."""
        keys_of = self._keys_of
        by_key = self._by_key
        for event in events:
            keys = keys_of(event)
            if type(keys) is tuple and len(keys) == 1 and keys[0] != BROADCAST:  # the usual case
                subs = by_key.get(keys[0])
                if subs:
                    for sub in tuple(subs):
                        sub.push(event)  # may drop the subscription, which unsubscribes it
            elif keys:
                self._deliver(event, keys)

    def offer(self, event: Event) -> None:
        """The store hands over one event of this fan-out's tables."""
        self._deliver(event, self._keys_of(event))

    def _deliver(self, event: Event, named: Iterable[str]) -> None:
        keys = set(named)
        if BROADCAST in keys:
            targets = [sub for subs in self._by_key.values() for sub in subs]
        else:
            targets = []
            for key in keys:
                subs = self._by_key.get(key)
                if subs:
                    targets.extend(subs)
        for sub in targets:
            sub.push(event)  # may drop the subscription, which unsubscribes it

    def drop(self, reason: str) -> None:
        """Drop every subscription (the store was reset): each subscriber resyncs."""
        for sub in [sub for subs in self._by_key.values() for sub in subs]:
            sub.drop(reason)
