"""The level-triggered loop shared by the orchestrators and the task reaper.

Theory of operation: `run()` takes a snapshot-and-subscription, reconciles every service,
then sleeps until an event arrives or a service's own wake-up time (a restart delay, an
update's monitor window or batch delay) comes. Events only mark service IDs dirty; each
round re-reads the store inside one write transaction per service, so a round always
acts on current state. A write that loses to a concurrent one (StaleVersion) leaves the
service dirty for the next round. A dropped watch starts over with a full reconcile.
Owned by the leader's per-term TaskGroup: cancelling `run()` stops it cleanly.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from aio import cancel_and_wait
from manager.orchestrator.clock import Clock, SystemClock
from manager.store import Event, StaleVersion, Store, Subscription, WatchDropped, WriteTx

log = logging.getLogger(__name__)
ALL = None  # "every service"
RETRY_AFTER_ERROR = 1.0  # seconds before a service whose round raised is tried again
MAX_IMMEDIATE_RETRIES = 3


class ReconcileLoop:
    tables: tuple[str, ...] = ("services", "tasks", "nodes")

    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.wakes: dict[str, float] = {}
        self.rounds = 0

    # -- to provide ---------------------------------------------------------------------------
    def reconcile_service(self, tx: WriteTx, service_id: str, now: float) -> float | None:
        """Bring one service's tasks in line; return when to look again (or None)."""
        raise NotImplementedError

    def dirty_from(self, event: Event) -> set[str] | None:
        """Service IDs an event may affect (None: all of them)."""
        if event.table == "services":
            return {event.obj.id}
        if event.table == "tasks":
            return {event.obj.service_id}
        return ALL

    def dirty_from_events(self, events: list[Event]) -> set[str] | None:
        """Service IDs a batch of events may affect (None: all of them): `dirty_from` of each."""
        dirty: set[str] = set()
        if type(self).dirty_from is not ReconcileLoop.dirty_from:
            for event in events:
                more = self.dirty_from(event)
                if more is ALL:
                    return ALL
                dirty |= more
            return dirty
        for event in events:  # the rule of ReconcileLoop.dirty_from, without a set per event
            table = event.table
            if table == "tasks":
                dirty.add(event.obj.service_id)
            elif table == "services":
                dirty.add(event.obj.id)
            else:
                return ALL
        return dirty

    def service_ids(self, tx: WriteTx | None = None) -> set[str]:
        ids = self.store.view(lambda tx: {s.id for s in tx.all("services")})
        return ids | set(self.wakes)

    # -- driving ------------------------------------------------------------------------------
    async def reconcile(self, service_ids: set[str] | None = ALL) -> set[str]:
        """One round over `service_ids` (all when None). Returns the IDs to retry."""
        self.rounds += 1
        ids = self.service_ids() if service_ids is None else set(service_ids)
        retry: set[str] = set()
        for service_id in sorted(ids):
            now = self.clock.now()
            self.wakes.pop(service_id, None)
            try:
                wake = await self.store.update(functools.partial(self._reconcile_one, service_id, now))
            except StaleVersion as exc:
                log.info("%s: service %s gives way (%s); retrying", type(self).__name__, service_id, exc)
                retry.add(service_id)
                continue
            except Exception:
                # One service's trouble must not stop the loop for all others: try it again later.
                log.exception("%s: reconciling service %s failed", type(self).__name__, service_id)
                self.wakes[service_id] = now + RETRY_AFTER_ERROR
                continue
            if wake is not None:
                self.wakes[service_id] = wake
        return retry

    def _reconcile_one(self, service_id: str, now: float, tx: WriteTx) -> float | None:
        return self.reconcile_service(tx, service_id, now)

    def due(self) -> set[str]:
        now = self.clock.now()
        return {sid for sid, when in self.wakes.items() if when <= now}

    async def run(self) -> None:
        while True:
            _, sub = self.store.view_and_watch(lambda tx: None, tables=self.tables)
            try:
                dirty: set[str] | None = ALL
                retries = 0
                while True:
                    dirty = await self.reconcile(dirty)
                    if dirty and retries < MAX_IMMEDIATE_RETRIES:
                        retries += 1
                        continue
                    for service_id in dirty or ():
                        self.wakes[service_id] = self.clock.now() + RETRY_AFTER_ERROR
                    retries = 0
                    await self._wait(sub)
                    due = self.due()
                    more = self.dirty_from_events(sub.drain())
                    dirty = ALL if more is ALL else due | more
            except WatchDropped:
                continue
            finally:
                sub.close()

    async def _wait(self, sub: Subscription) -> None:
        if not self.wakes:
            await sub.wait()
            return
        delay = max(0.0, min(self.wakes.values()) - self.clock.now())
        if delay == 0:
            return
        waiters = [asyncio.ensure_future(sub.wait()), asyncio.ensure_future(self.clock.sleep(delay))]
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()
        finally:
            await cancel_and_wait(waiters)
