"""The replicated store: committed state in memory, writes through a proposer (Raft).

Theory of operation:
- `view(fn)` runs `fn` on a read-only transaction over the committed state.
- `update(fn)` runs `fn` on a write transaction, encodes its changes (msgpack) and hands
  them to the proposer. Memory changes only in `apply(data)`, which the proposer (the Raft
  driver, for every committed entry, on every replica) calls in log order. `update` returns
  once its own entry is applied, or raises the error that rejected it.
- Writes are serialised by one lock, so a writer's checks see every earlier write of this
  store. `apply` repeats the checks (versions, names) deterministically, so an entry made
  stale by another leader's entry is rejected the same way on every replica.
- Every applied entry sets `index` (the Raft index when given, else a counter) and that index
  becomes `Version.Index` of each object it wrote.
- Watchers get events for every applied change; `view_and_watch` takes a snapshot and
  subscribes with no await in between, so nothing is missed or seen twice. Watchers are kept
  per table, so an event reaches only those of its table; a `fanout` serves many watchers of
  one key each (per node) at the cost of one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgpack

from manager.store.errors import NameConflict, ObjectExists, StaleVersion, StoreError, WatchDropped
from manager.store.memory import TABLES, MemoryTables, ReadTx
from manager.store.tx import CREATE, DELETE, Change, Key, WriteTx, merge_change
from manager.store.watch import Event, Fanout, Subscription
from model import KIND_WORDS, OBJECT_TYPES, UNIQUE_NAME_TABLES, format_time

T = TypeVar("T")
MAX_CHANGES_PER_PROPOSAL = 400
DEFAULT_WATCH_LIMIT = 10_000


class Proposer(Protocol):
    async def propose(self, data: bytes) -> None:
        """Returns once `data` is committed and the store has applied it."""


class InMemoryProposer:
    """Applies each proposal at once (single node, no Raft): for tests and tools."""

    def __init__(self, apply: Callable[[bytes], None]) -> None:
        self._apply = apply

    async def propose(self, data: bytes) -> None:
        self._apply(data)


@dataclass
class BatchResult:
    results: list[Any] = field(default_factory=list)  # per queued update: its value or None
    errors: list[Exception | None] = field(default_factory=list)  # per queued update

    @property
    def failed(self) -> int:
        return sum(e is not None for e in self.errors)


class Batch:
    def __init__(self) -> None:
        self.queued: list[Callable[[WriteTx], Any]] = []

    def update(self, fn: Callable[[WriteTx], Any]) -> None:
        """Queue one small transaction; it runs (and may fail) on its own."""
        self.queued.append(fn)


class Store:
    def __init__(self, proposer: Proposer | None = None, clock: Callable[[], float] = time.time,
                 watch_limit: int = DEFAULT_WATCH_LIMIT) -> None:
        self._memory = MemoryTables()
        self.proposer: Proposer = proposer or InMemoryProposer(self.apply)
        self._clock = clock
        self._watch_limit = watch_limit
        self._subscriptions: list[Subscription] = []
        self._fanouts: list[Fanout] = []
        # Per table, every watcher (subscription or fan-out) that wants its events.
        self._listeners: dict[str, list[Subscription | Fanout]] = {name: [] for name in TABLES}
        self._lock = asyncio.Lock()
        self._tx_ids = itertools.count(1)
        self._tx_prefix = os.urandom(6).hex()
        self._outcomes: dict[str, StoreError | None] = {}
        self._waiting: set[str] = set()
        # Proposals of this store awaiting their commit: id(data) -> (data, tx ID, changes).
        self._proposed: dict[int, tuple[bytes, str, list[Change]]] = {}

    @property
    def index(self) -> int:
        return self._memory.index

    # -- reads -----------------------------------------------------------------------------
    def view(self, fn: Callable[[ReadTx], T]) -> T:
        return fn(ReadTx(self._memory))

    def watch(self, predicate: Callable[[Event], bool] | None = None, tables: tuple[str, ...] = (),
              limit: int | None = None) -> Subscription:
        """Subscribe to later events (of `tables`, if given, and passing `predicate`)."""
        for table in tables:
            self._memory.table(table)  # a clear error for an unknown table
        sub = Subscription(predicate, limit or self._watch_limit, self._unsubscribe, tables)
        self._subscriptions.append(sub)
        for table in sub.tables or TABLES:
            self._listeners[table].append(sub)
        return sub

    async def changes(self, tables: tuple[str, ...]) -> AsyncGenerator[None, None]:
        """Yield at once and again after every commit that touches `tables` (several commits may
        fold into one wake-up), for loops that re-read the whole state each time. A dropped
        watch (the consumer lagged, or the store was reset) yields again, so nothing is missed.
        Use under `contextlib.aclosing` so the subscription is closed with the loop."""
        while True:
            sub = self.watch(tables=tables)
            try:
                while True:
                    yield
                    await sub.wait()
                    sub.drain()
            except WatchDropped:
                continue
            finally:
                sub.close()

    def fanout(self, tables: tuple[str, ...], keys_of: Callable[[Event], Iterable[str]],
               limit: int | None = None) -> Fanout:
        """A fan-out over `tables`: subscribers each get only the events whose keys (from
        `keys_of`) name theirs, at O(keys) per event (see watch.py). `view(fn)` followed by
        `fanout.subscribe(key)`, with no await between, is a snapshot-and-watch."""
        for table in tables:
            self._memory.table(table)
        return Fanout(tables, keys_of, limit or self._watch_limit, self._attach_fanout, self._detach_fanout)

    def _attach_fanout(self, fanout: Fanout) -> None:
        if fanout not in self._fanouts:
            self._fanouts.append(fanout)
            for table in fanout.tables:
                self._listeners[table].append(fanout)

    def _detach_fanout(self, fanout: Fanout) -> None:
        if fanout in self._fanouts:
            self._fanouts.remove(fanout)
            for table in fanout.tables:
                self._listeners[table].remove(fanout)

    def view_and_watch(self, fn: Callable[[ReadTx], T], predicate: Callable[[Event], bool] | None = None,
                       tables: tuple[str, ...] = (), limit: int | None = None) -> tuple[T, Subscription]:
        """A snapshot and a subscription to every event after it, atomically."""
        result = self.view(fn)
        return result, self.watch(predicate, tables, limit)

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)
            for table in sub.tables or TABLES:
                self._listeners[table].remove(sub)

    # -- writes ----------------------------------------------------------------------------
    def _now(self) -> str:
        return format_time(self._clock())

    async def update(self, fn: Callable[[WriteTx], T]) -> T:
        """Run `fn` in a write transaction; return its value once the changes are applied."""
        async with self._lock:
            tx = WriteTx(self._memory, self._now())
            result = fn(tx)
            if tx.changes:
                await self._propose(list(tx.changes.values()))
            return result

    async def batch(self, fn: Callable[[Batch], Any]) -> BatchResult:
        """Run many small transactions queued by `fn`; each succeeds or fails on its own.
        Their changes are proposed together, up to MAX_CHANGES_PER_PROPOSAL per entry."""
        batch = Batch()
        fn(batch)
        outcome = BatchResult()
        results, errors = outcome.results, outcome.errors
        async with self._lock:
            pending: dict[Key, Change] = {}
            members: list[int] = []  # positions of the transactions in `pending`
            now = self._now()
            for position, txfn in enumerate(batch.queued):
                tx = WriteTx(self._memory, now, parent=pending)
                try:
                    value = txfn(tx)
                    for key, change in tx.changes.items():
                        if key in pending:
                            merge_change(pending, change)
                        else:
                            pending[key] = change
                except Exception as exc:
                    results.append(None)
                    errors.append(exc)
                    continue
                results.append(value)
                errors.append(None)
                members.append(position)
                if len(pending) >= MAX_CHANGES_PER_PROPOSAL:
                    await self._flush(pending, members, outcome)
                    await asyncio.sleep(0)  # a proposer that applies at once must not stall the loop
            await self._flush(pending, members, outcome)
        return outcome

    async def _flush(self, pending: dict[Key, Change], members: list[int], outcome: BatchResult) -> None:
        if pending:
            try:
                await self._propose(list(pending.values()))
            except Exception as exc:
                for position in members:
                    outcome.results[position] = None
                    outcome.errors[position] = exc
        pending.clear()
        members.clear()

    async def _propose(self, changes: list[Change]) -> None:
        tx_id = f"{self._tx_prefix}-{next(self._tx_ids)}"
        data = msgpack.packb({"tx": tx_id, "c": [[c.op, c.table, c.expected_version, c.obj.to_record()]
                                                 if c.op != DELETE else c.to_wire() for c in changes]},
                             use_bin_type=True)  # Change.to_wire, inlined for big batches
        self._waiting.add(tx_id)
        self._proposed[id(data)] = (data, tx_id, changes)
        try:
            await self.proposer.propose(data)
            if tx_id not in self._outcomes:
                raise StoreError("proposal completed but was never applied")
            error = self._outcomes.pop(tx_id)
        finally:
            self._waiting.discard(tx_id)
            self._outcomes.pop(tx_id, None)
            self._proposed.pop(id(data), None)
        if error is not None:
            raise error

    # -- applying committed entries ----------------------------------------------------------
    def apply(self, data: bytes, index: int | None = None) -> None:
        """Apply one committed entry (called by the proposer / Raft driver, in log order).

        When `data` is the very bytes object this store proposed (the leader, its entry handed
        back by Raft), the changes it encoded are applied as they are instead of being decoded
        again: they hold the same records (the objects' `to_record()` is what was encoded), so
        every replica ends in the same state; any other entry is decoded."""
        proposed = self._proposed.pop(id(data), None) if self._proposed else None
        if proposed is not None and proposed[0] is data:
            self._apply_changes(proposed[2], proposed[1], index)
            return
        entry = msgpack.unpackb(data, raw=False)
        if "restore" in entry:  # a whole-state reset (forcing a new cluster from a member's state)
            self.restore(entry["restore"])
            if index is not None and index > self._memory.index:
                self._memory.index = index
            if entry.get("tx") in self._waiting:
                self._outcomes[entry["tx"]] = None
            return
        self._apply_changes([Change.from_wire(w, self._memory) for w in entry["c"]], entry.get("tx"), index)

    def _apply_changes(self, changes: list[Change], tx_id: str | None, index: int | None) -> None:
        error = self._check(changes)
        if index is not None and index > self._memory.index:
            self._memory.index = index  # a rejected entry still occupies its log index
        elif error is None:
            self._memory.index += 1
        if error is None:
            self._commit(changes)
        if tx_id in self._waiting:
            self._outcomes[tx_id] = error

    def _check(self, changes: list[Change]) -> StoreError | None:
        """The deterministic precondition of an entry: every change or none."""
        created_names: dict[tuple[str, str], str] = {}
        tables = self._memory.tables
        for change in changes:
            table = tables.get(change.table) or self._memory.table(change.table)
            obj = change.obj
            current = table.objects.get(obj.id)
            if change.op == CREATE:
                if current is not None:
                    return ObjectExists(f"{KIND_WORDS[change.table]} {obj.id} already exists")
            elif current is None or current.version != change.expected_version:
                return StaleVersion(f"{KIND_WORDS[change.table]} {obj.id}")
            if change.table in UNIQUE_NAME_TABLES and change.op != DELETE and obj.name:
                kind = KIND_WORDS[change.table]
                lowered = obj.name.lower()
                holders = table.by_name.get(lowered, set()) - {obj.id}
                renamed_away = {c.obj.id for c in changes if c.table == change.table
                                and (c.op == DELETE or c.obj.name.lower() != lowered)}
                if holders - renamed_away or created_names.get((change.table, lowered), obj.id) != obj.id:
                    return NameConflict(kind, obj.name)
                created_names[(change.table, lowered)] = obj.id
        return None

    def _commit(self, changes: list[Change]) -> None:
        index = self._memory.index
        tables = self._memory.tables
        by_table: dict[str, list[Event]] = {}
        for change in changes:
            name = change.table
            table = tables[name]
            events = by_table.get(name)
            if events is None:
                events = by_table[name] = []
            obj = change.obj
            if change.op == DELETE:
                events.append(Event(DELETE, name, table.remove(obj.id), None, index))
                continue
            obj.version = index
            old = table.objects.get(obj.id)
            table.replace(obj, old)
            events.append(Event(change.op, name, obj, old, index))
        for table_name, table_events in by_table.items():
            for listener in tuple(self._listeners[table_name]):
                listener.offer_all(table_events)

    async def reset(self, snapshot: bytes) -> None:
        """Replace the whole state with `snapshot` through the log, so the reset is durable and
        replicated like any write (used when a manager forces a new cluster)."""
        async with self._lock:
            tx_id = f"{self._tx_prefix}-{next(self._tx_ids)}"
            self._waiting.add(tx_id)
            try:
                await self.proposer.propose(msgpack.packb({"tx": tx_id, "restore": snapshot}, use_bin_type=True))
            finally:
                self._waiting.discard(tx_id)
                self._outcomes.pop(tx_id, None)

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        return msgpack.packb({
            "v": 1, "index": self._memory.index,
            "tables": {name: [o.to_record() for o in t.objects.values()]
                       for name, t in self._memory.tables.items()},
        }, use_bin_type=True)

    def restore(self, data: bytes) -> None:
        """Replace all state with a snapshot. Every watcher is dropped and must resync."""
        snap = msgpack.unpackb(data, raw=False)
        if snap.get("v") != 1:
            raise StoreError(f"unsupported store snapshot version {snap.get('v')!r}")
        memory = MemoryTables()
        memory.index = int(snap["index"])
        for name, records in snap["tables"].items():
            table = memory.table(name)
            for rec in records:
                table.put(OBJECT_TYPES[name].from_record(rec))
        self._memory = memory
        for sub in list(self._subscriptions):
            sub.drop("store restored from a snapshot; resync")
        for fanout in list(self._fanouts):
            fanout.drop("store restored from a snapshot; resync")


async def retry_on_conflict(attempt: Callable[[], Awaitable[T]], tries: int = 5) -> T:
    """Run `attempt` again (it should re-read) while it fails with StaleVersion."""
    for _ in range(tries - 1):
        try:
            return await attempt()
        except StaleVersion:
            continue
    return await attempt()
