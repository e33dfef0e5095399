"""The store: transactions, versions, name conflicts, lookups, batches, watches, snapshots."""

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from manager.store import (
    BROADCAST,
    AmbiguousRef,
    InMemoryProposer,
    NameConflict,
    NotFound,
    StaleVersion,
    Store,
    WatchDropped,
    WriteTx,
)
from model import Node, Service, StoreObject, Task, TaskState, new_id


def service(name: str, sid: str | None = None) -> Service:
    return Service(id=sid or new_id(), spec={"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "x"}},
                                             "Mode": {"Replicated": {"Replicas": 1}}})


def creating(name: str) -> Callable[[WriteTx], StoreObject]:
    """A write that creates service `name` (bound now, not to a loop variable that moves on)."""
    return lambda tx: tx.create(service(name))


async def test_create_update_versions_and_stale_write() -> None:
    store = Store(clock=lambda: 1795000000.0)
    created = await store.update(lambda tx: tx.create(service("web")))
    svc = store.view(lambda tx: tx.get("services", created.id))
    assert svc.version == 1 and svc.created_at.startswith("2026-") and svc.created_at == svc.updated_at
    first = svc.copy()
    second = svc.copy()
    first.spec["Labels"] = {"a": "1"}
    await store.update(lambda tx: tx.update(first))
    after = store.view(lambda tx: tx.get("services", svc.id))
    assert after.version == 2 and after.spec["Labels"] == {"a": "1"}
    with pytest.raises(StaleVersion, match="update out of sequence"):
        await store.update(lambda tx: tx.update(second))
    assert store.view(lambda tx: tx.get("services", svc.id)).version == 2  # unchanged
    assert svc.version == 1  # objects handed out are never mutated by the store


async def test_name_conflict_is_case_insensitive_and_names_the_object() -> None:
    store = Store()
    await store.update(lambda tx: tx.create(service("web")))
    with pytest.raises(NameConflict, match="name conflicts with an existing object: service Web already"):
        await store.update(lambda tx: tx.create(service("Web")))
    assert len(store.view(lambda tx: tx.all("services"))) == 1


async def test_failed_transaction_writes_nothing() -> None:
    store = Store()

    def two_then_fail(tx):
        tx.create(service("a"))
        tx.create(service("b"))
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        await store.update(two_then_fail)
    assert store.view(lambda tx: tx.all("services")) == [] and store.index == 0


async def test_lookup_by_id_name_and_prefix() -> None:
    store = Store()
    await store.update(lambda tx: [tx.create(service("web", "abc" + "0" * 22)),
                                   tx.create(service("db", "abd" + "0" * 22)),
                                   tx.create(service("abc" + "0" * 22 + "x", "zz" + "0" * 23))])   # no "ab" ID prefix
    look = lambda ref: store.view(lambda tx: tx.lookup("services", ref))  # noqa: E731
    assert look("web").name == "web"
    assert look("abc" + "0" * 22).name == "web"  # exact ID beats a name
    assert look("abd").name == "db"
    with pytest.raises(AmbiguousRef, match=r"service ab is ambiguous \(2 matches found\)"):
        look("ab")
    with pytest.raises(NotFound, match="service nope not found"):
        look("nope")


async def test_tx_reads_its_own_writes_and_find_by_index() -> None:
    store = Store()
    sid = new_id()

    def make(tx):
        tx.create(service("web", sid))
        for slot in range(1, 4):
            tx.create(Task(id=new_id(), service_id=sid, slot=slot, spec={}))
        assert len(tx.find("tasks", service_id=sid)) == 3
        return tx.get("services", sid).name

    assert await store.update(make) == "web"
    assert len(store.view(lambda tx: tx.find("tasks", service_id=sid, slot=2))) == 1
    tasks = store.view(lambda tx: tx.find("tasks", service_id=sid))

    def move(tx):
        t = tasks[0].copy()
        t.node_id = "n1"
        tx.update(t)
        assert [x.id for x in tx.find("tasks", node_id="n1")] == [t.id]
        tx.delete("tasks", tasks[1].id)
        assert len(tx.find("tasks", service_id=sid)) == 2

    await store.update(move)
    assert len(store.view(lambda tx: tx.find("tasks", node_id="n1"))) == 1
    assert len(store.view(lambda tx: tx.find("tasks", node_id=""))) == 1


async def test_batch_each_update_alone_and_chunked() -> None:
    proposals: list[bytes] = []
    store = Store()
    inner = InMemoryProposer(store.apply)

    class Counting:
        async def propose(self, data: bytes) -> None:
            proposals.append(data)
            await inner.propose(data)

    store.proposer = Counting()
    await store.update(lambda tx: tx.create(service("taken")))

    def queue(batch):
        for i in range(1000):
            batch.update(lambda tx, i=i: tx.create(service("taken" if i == 500 else f"s{i}")))

    result = await store.batch(queue)
    assert result.failed == 1 and isinstance(result.errors[500], NameConflict)
    assert len(store.view(lambda tx: tx.all("services"))) == 1000
    assert len(proposals) == 1 + 3  # 999 creates in chunks of at most 400


async def test_apply_rejects_stale_entries_deterministically() -> None:
    """Two stores applying the same entries agree, even when an entry is stale."""
    leader = Store()
    follower = Store()
    log: list[bytes] = []

    class Replicating:
        async def propose(self, data: bytes) -> None:
            log.append(data)
            leader.apply(data, index=len(log) + 10)

    leader.proposer = Replicating()
    svc = await leader.update(lambda tx: tx.create(service("web")))
    current = leader.view(lambda tx: tx.get("services", svc.id)).copy()
    current.spec["Labels"] = {"v": "1"}
    await leader.update(lambda tx: tx.update(current))
    # Replay an entry made from an old read: it is rejected on apply.
    log.append(log[1])
    leader.apply(log[-1], index=13)
    for i, data in enumerate(log):
        follower.apply(data, index=i + 11)
    assert follower.snapshot() == leader.snapshot()
    assert follower.view(lambda tx: tx.get("services", svc.id)).version == 12


async def test_watch_events_and_view_and_watch_atomicity() -> None:
    store = Store()
    await store.update(lambda tx: tx.create(service("a")))
    names, sub = store.view_and_watch(lambda tx: [s.name for s in tx.all("services")], tables=("services",))
    await store.update(lambda tx: tx.create(service("b")))
    await store.update(lambda tx: tx.create(Node(id=new_id(), spec={}, description={"Hostname": "h"})))
    events = sub.drain()
    assert names == ["a"] and [(e.op, e.obj.name) for e in events] == [("create", "b")]
    assert events[0].index == store.index - 1
    got = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    b = store.view(lambda tx: tx.lookup("services", "b")).copy()
    await store.update(lambda tx: tx.delete("services", b.id))
    event = await asyncio.wait_for(got, 1)
    assert event.op == "delete" and event.obj.name == "b"
    sub.close()


async def test_lagging_watcher_is_dropped_and_told() -> None:
    store = Store()
    slow = store.watch(limit=5)
    fast = store.watch(limit=100)
    for i in range(6):
        await store.update(creating(f"s{i}"))
    with pytest.raises(WatchDropped, match="overflowed"):
        slow.drain()
    with pytest.raises(WatchDropped):
        await slow.get()
    assert len(fast.drain()) == 6


async def test_snapshot_restore_rebuilds_and_drops_watchers() -> None:
    store = Store()
    sid = new_id()
    await store.update(lambda tx: [tx.create(service("web", sid)),
                                   tx.create(Task(id=new_id(), service_id=sid, slot=1, spec={},
                                                  desired_state=TaskState.READY))])
    snap = store.snapshot()
    copy = Store()
    sub = copy.watch()
    copy.restore(snap)
    with pytest.raises(WatchDropped, match="restored"):
        sub.drain()
    assert copy.index == store.index
    task = copy.view(lambda tx: tx.find("tasks", service_id=sid))[0]
    assert task.desired_state is TaskState.READY
    with pytest.raises(NameConflict):
        await copy.update(lambda tx: tx.create(service("web")))
    assert copy.snapshot() == snap


async def test_concurrent_updates_are_serialised() -> None:
    store = Store()
    svc = await store.update(lambda tx: tx.create(service("web")))

    async def bump() -> None:
        def fn(tx):
            cur = tx.get("services", svc.id).copy()
            cur.spec["Labels"] = {"n": str(int((cur.spec.get("Labels") or {}).get("n", "0")) + 1)}
            tx.update(cur)
        await store.update(fn)

    await asyncio.gather(*(bump() for _ in range(20)))
    assert store.view(lambda tx: tx.get("services", svc.id)).spec["Labels"] == {"n": "20"}


async def test_rebuild_from_snapshot_plus_log_tail() -> None:
    """A restarted manager: restore the Raft snapshot, then replay the entries after it."""
    log: list[bytes] = []
    original = Store()

    class Logging:
        async def propose(self, data: bytes) -> None:
            log.append(data)
            original.apply(data, index=len(log))

    original.proposer = Logging()
    sid = new_id()
    await original.update(lambda tx: tx.create(service("web", sid)))
    for i in range(4):
        def create_task(tx: WriteTx, i: int = i) -> StoreObject:
            return tx.create(Task(id=new_id(), service_id=sid, slot=i + 1, spec={}))
        await original.update(create_task)
    snap, snap_index = original.snapshot(), original.index
    for i in range(3):
        def bump(tx, i=i):
            svc = tx.get("services", sid).copy()
            svc.spec["Labels"] = {"n": str(i)}
            tx.update(svc)
        await original.update(bump)
    rebuilt = Store()
    rebuilt.restore(snap)
    for index in range(snap_index + 1, len(log) + 1):
        rebuilt.apply(log[index - 1], index=index)
    assert rebuilt.snapshot() == original.snapshot()
    assert rebuilt.view(lambda tx: tx.get("services", sid)).version == len(log)


async def test_fanout_routes_by_key_broadcasts_and_detaches_when_unused() -> None:
    store = Store()

    def keys(event: Any) -> tuple[str, ...]:
        name = event.obj.name
        return (BROADCAST,) if name.startswith("all") else (name[:1],)

    fanout = store.fanout(("services",), keys, limit=2)
    x1, x2, y = fanout.subscribe("x"), fanout.subscribe("x"), fanout.subscribe("y")
    for name in ("x-one", "y-one", "all"):
        await store.update(creating(name))
    await store.update(lambda tx: tx.create(Node(id=new_id(), spec={"Name": "x-node"})))  # not its table
    assert [e.obj.name for e in x1.drain()] == ["x-one", "all"] == [e.obj.name for e in x2.drain()]
    assert [e.obj.name for e in y.drain()] == ["y-one", "all"]
    for name in ("y-two", "y-three", "y-four"):  # y lags past its limit of 2: dropped
        await store.update(creating(name))
    with pytest.raises(WatchDropped, match="overflowed"):
        y.drain()
    assert fanout.subscribers() == 2
    x1.close()
    x2.close()
    assert fanout.subscribers() == 0 and not store._fanouts  # detached: costs nothing now
    again = fanout.subscribe("x")
    store.restore(store.snapshot())
    with pytest.raises(WatchDropped, match="restored"):
        again.drain()


async def test_one_entry_larger_than_a_watch_limit_drops_the_watcher() -> None:
    store = Store()
    small, roomy = store.watch(limit=5), store.watch(tables=("services",), limit=6)
    await store.update(lambda tx: [tx.create(service(f"s{i}")) for i in range(6)])
    with pytest.raises(WatchDropped, match="overflowed"):
        small.drain()
    assert [e.obj.name for e in roomy.drain()] == [f"s{i}" for i in range(6)]
