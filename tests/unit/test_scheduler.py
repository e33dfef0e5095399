"""The scheduler: filters and their explanations, spread, preferences, level triggering, speed."""

import asyncio
import time
from collections import Counter

import pytest

from manager.scheduler import Pipeline, Scheduler, place_group
from manager.scheduler.nodeinfo import NodeInfo
from manager.store import Store
from model import Node, Task, TaskState, TaskStatus, new_id

GB = 1 << 30


def node(name: str, *, state: str = "ready", availability: str = "active", role: str = "worker",
         labels: dict | None = None, cpus: int = 4, memory: int = 8 * GB, arch: str = "x86_64") -> Node:
    return Node(id=new_id(), spec={"Role": role, "Availability": availability, "Labels": labels or {}},
                description={"Hostname": name, "Platform": {"OS": "linux", "Architecture": arch},
                             "Resources": {"NanoCPUs": cpus * 10**9, "MemoryBytes": memory}},
                status={"State": state, "Message": "", "Addr": "127.0.0.1"})


def task(service_id: str, slot: int, *, memory: int = 0, cpu: int = 0, constraints=(), prefs=(),
         platforms=(), node_id: str = "", max_replicas: int = 0) -> Task:
    placement: dict = {}
    if constraints:
        placement["Constraints"] = list(constraints)
    if prefs:
        placement["Preferences"] = [{"Spread": {"SpreadDescriptor": p}} for p in prefs]
    if platforms:
        placement["Platforms"] = list(platforms)
    if max_replicas:
        placement["MaxReplicas"] = max_replicas
    spec = {"ContainerSpec": {"Image": "busybox"}, "Placement": placement,
            "Resources": {"Reservations": {"MemoryBytes": memory, "NanoCPUs": cpu}}}
    return Task(id=new_id(), service_id=service_id, slot=slot, node_id=node_id, spec=spec,
                status=TaskStatus(TaskState.PENDING, "", "pending task scheduling"))


async def setup(nodes: list[Node], tasks: list[Task]) -> tuple[Store, Scheduler]:
    store = Store()
    await store.update(lambda tx: [tx.create(o) for o in (*nodes, *tasks)])
    sched = Scheduler(store)
    store.view(sched.load)
    return store, sched


def placed(store: Store) -> dict[str, Task]:
    return {t.id: t for t in store.view(lambda tx: tx.all("tasks"))}


async def test_spread_evenly_then_by_total() -> None:
    nodes = [node(f"n{i}") for i in range(3)]
    busy = [task("other", i) for i in range(1, 4)]
    store, sched = await setup(nodes, busy)
    assert await sched.tick() == 3  # the other service spreads one per node
    web = [task("web", i) for i in range(1, 7)]
    await store.update(lambda tx: [tx.create(t) for t in web])
    store.view(sched.load)
    assert await sched.tick() == 6
    tasks = placed(store)
    per_node = Counter(tasks[t.id].node_id for t in web)
    assert sorted(per_node.values()) == [2, 2, 2]
    assert all(tasks[t.id].status.state is TaskState.ASSIGNED for t in web)
    assert tasks[web[0].id].status.message == "scheduler assigned task to node"


async def test_fewest_service_tasks_first_then_fewest_overall() -> None:
    a, b = node("a"), node("b")
    infos = [NodeInfo(a), NodeInfo(b)]
    for i in range(3):
        infos[0].add_task(task("other", i))  # a: no web task, 3 tasks in all
    infos[1].add_task(task("web", 1))  # b: one web task, 1 task in all
    pairs, err = place_group([task("web", 2)], infos, Pipeline())
    assert err == "" and pairs[0][1].node is a


async def test_fewest_overall_breaks_ties() -> None:
    a, c = node("a"), node("c")
    infos = [NodeInfo(a), NodeInfo(c)]
    for i in range(3):
        infos[0].add_task(task("other", i))
    pairs, _ = place_group([task("web", 1)], infos, Pipeline())
    assert pairs[0][1].node is c


async def test_unplaceable_task_stays_pending_with_counted_reasons() -> None:
    nodes = [node("drained", availability="drain"), node("down", state="down"),
             node("small1", memory=GB), node("small2", memory=GB), node("paused", availability="pause")]
    big = task("web", 1, memory=4 * GB)
    store, sched = await setup(nodes, [big])
    assert await sched.tick() == 0
    after = placed(store)[big.id]
    assert after.status.state is TaskState.PENDING and after.node_id == ""
    assert after.status.err == ("no suitable node (3 nodes not available for new tasks; "
                                "2 nodes insufficient memory)")
    assert after.status.message == "pending task scheduling"
    version = after.version
    await sched.tick()  # same reason: no rewrite
    assert placed(store)[big.id].version == version


async def test_pending_task_placed_when_a_node_fits() -> None:
    small = node("small", memory=GB)
    big = task("web", 1, memory=2 * GB)
    store, sched = await setup([small], [big])
    _, sub = store.view_and_watch(lambda tx: None, tables=("nodes", "tasks"))
    await sched.tick()
    assert placed(store)[big.id].status.err == "no suitable node (1 node insufficient memory)"
    roomy = node("roomy", memory=4 * GB)
    await store.update(lambda tx: tx.create(roomy))
    for ev in sub.drain():
        sched.handle(ev)
    assert await sched.tick() == 1
    assert placed(store)[big.id].node_id == roomy.id


async def test_freed_reservation_lets_pending_task_in() -> None:
    n = node("n", memory=GB)
    first, second = task("web", 1, memory=GB // 2 + 1), task("web", 2, memory=GB // 2 + 1)
    store, sched = await setup([n], [first, second])
    _, sub = store.view_and_watch(lambda tx: None, tables=("nodes", "tasks"))
    assert await sched.tick() == 1
    waiting = next(t for t in placed(store).values() if t.status.state is TaskState.PENDING)
    assert "insufficient memory" in waiting.status.err
    running = next(t for t in placed(store).values() if t.node_id).copy()
    running.status.advance(TaskState.FAILED, "", "", err="exit 1")
    await store.update(lambda tx: tx.update(running))
    for ev in sub.drain():
        sched.handle(ev)
    assert await sched.tick() == 1
    assert placed(store)[waiting.id].node_id == n.id


async def test_cpu_and_memory_accumulate() -> None:
    n = node("n", cpus=2, memory=8 * GB)
    tasks = [task("web", i, cpu=10**9) for i in range(1, 4)]
    store, sched = await setup([n], tasks)
    assert await sched.tick() == 2
    err = [t.status.err for t in placed(store).values() if not t.node_id]
    assert err == ["no suitable node (1 node insufficient CPU)"]


async def test_constraints_and_platform() -> None:
    mgr = node("m1", role="manager", labels={"zone": "a"})
    w1 = node("w1", labels={"zone": "b"})
    w2 = node("w2", labels={"zone": "b"}, arch="aarch64")
    tasks = [task("s1", 1, constraints=["node.role==manager"]),
             task("s2", 1, constraints=["node.labels.zone==b", "node.hostname!=w1"]),
             task("s3", 1, platforms=[{"OS": "linux", "Architecture": "arm64"}]),
             task("s4", 1, constraints=["node.labels.zone==c"]),
             task("s5", 1, platforms=[{"OS": "windows", "Architecture": "amd64"}])]
    store, sched = await setup([mgr, w1, w2], tasks)
    assert await sched.tick() == 3
    got = placed(store)
    assert got[tasks[0].id].node_id == mgr.id
    assert got[tasks[1].id].node_id == w2.id
    assert got[tasks[2].id].node_id == w2.id
    assert got[tasks[3].id].status.err == "no suitable node (3 nodes not matching placement constraints)"
    assert got[tasks[4].id].status.err == "no suitable node (3 nodes unsupported platform)"


async def test_placement_preferences_spread_over_label_values() -> None:
    nodes = [node("a1", labels={"zone": "a"})] + [node(f"b{i}", labels={"zone": "b"}) for i in range(3)] + \
        [node("x")]  # no zone label: its own branch
    tasks = [task("web", i, prefs=["node.labels.zone"]) for i in range(1, 7)]
    store, sched = await setup(nodes, tasks)
    assert await sched.tick() == 6
    zone = {n.id: n.spec["Labels"].get("zone", "") for n in nodes}
    per_zone = Counter(zone[t.node_id] for t in placed(store).values())
    assert per_zone == {"a": 2, "b": 2, "": 2}


async def test_max_replicas_per_node() -> None:
    nodes = [node("a"), node("b")]
    tasks = [task("web", i, max_replicas=1) for i in range(1, 4)]
    store, sched = await setup(nodes, tasks)
    assert await sched.tick() == 2
    left = [t for t in placed(store).values() if not t.node_id]
    assert left[0].status.err == "no suitable node (2 nodes at the max replicas per node limit)"


async def test_preassigned_task_checked_on_its_node_only() -> None:
    good, drained = node("good"), node("drained", availability="drain")
    t1, t2 = task("g", 0, node_id=good.id), task("g", 0, node_id=drained.id)
    store, sched = await setup([good, drained], [t1, t2])
    assert await sched.tick() == 1
    got = placed(store)
    assert got[t1.id].status.state is TaskState.ASSIGNED and got[t1.id].node_id == good.id
    assert got[t2.id].status.err == "no suitable node (1 node not available for new tasks)"


async def test_new_tasks_ignored_unless_accept_new() -> None:
    n = node("n")
    t = task("web", 1)
    t.status = TaskStatus(TaskState.NEW)
    store, sched = await setup([n], [t])
    assert await sched.tick() == 0
    sched = Scheduler(store, accept_new=True)
    store.view(sched.load)
    assert await sched.tick() == 1


async def test_shutdown_desired_tasks_are_not_placed() -> None:
    n = node("n")
    t = task("web", 1)
    t.desired_state = TaskState.SHUTDOWN
    _store, sched = await setup([n], [t])
    assert await sched.tick() == 0


async def test_thousands_of_tasks_on_hundreds_of_nodes_fast() -> None:
    nodes = [node(f"n{i}", labels={"zone": f"z{i % 3}"}) for i in range(300)]
    tasks = [task(f"svc{s}", i, memory=1 << 20, prefs=["node.labels.zone"] if s % 2 else ())
             for s in range(5) for i in range(1, 1001)]
    infos = [NodeInfo(n) for n in nodes]
    sched = Scheduler(Store())
    sched.nodes = {i.id: i for i in infos}
    sched.unassigned = {t.id: t for t in tasks}
    started = time.perf_counter()
    decisions = sched.decide()
    elapsed = time.perf_counter() - started
    assert all(d.node_id for d in decisions) and len(decisions) == 5000
    counts = Counter(d.node_id for d in decisions)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert elapsed < 1.0, elapsed


async def test_run_loop_places_tasks_as_they_arrive() -> None:
    store = Store()
    sched = Scheduler(store)
    await store.update(lambda tx: tx.create(node("n1")))
    _, sub = store.view_and_watch(lambda tx: None, tables=("tasks",))
    async with asyncio.TaskGroup() as tg:
        loop = tg.create_task(sched.run())
        t = task("web", 1)
        await store.update(lambda tx: tx.create(t))
        async with asyncio.timeout(5):
            while True:
                events = [e for e in sub.drain() if e.obj.id == t.id and e.obj.node_id]
                if events:
                    break
                await sub.wait()
        loop.cancel()
    assert placed(store)[t.id].status.state is TaskState.ASSIGNED


@pytest.mark.parametrize("n_failed", [1, 2])
def test_explain_grammar(n_failed: int) -> None:
    from manager.scheduler import MemoryFilter
    assert MemoryFilter().explain(n_failed) == f"{n_failed} node{'s' if n_failed > 1 else ''} insufficient memory"


async def test_run_loop_resyncs_after_its_watch_is_dropped() -> None:
    store = Store(watch_limit=5)  # any burst of more than 5 events drops the scheduler's watch
    sched = Scheduler(store)
    await store.update(lambda tx: tx.create(node("n1")))
    tasks = [task("web", i) for i in range(1, 41)]
    observer = store.watch(tables=("tasks",), limit=10_000)
    async with asyncio.TaskGroup() as tg:
        loop = tg.create_task(sched.run())
        await asyncio.sleep(0)
        await store.update(lambda tx: [tx.create(t) for t in tasks])
        async with asyncio.timeout(5):
            while any(not t.node_id for t in placed(store).values()):
                await observer.wait()
                observer.drain()
        loop.cancel()
    assert all(t.status.state is TaskState.ASSIGNED for t in placed(store).values())
