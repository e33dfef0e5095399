"""Replicated and global orchestrators, restart supervisor and task reaper, on an in-memory swarm."""

import asyncio
from collections import Counter

from bench.support.swarm_sim import Harness, make_node
from manager.orchestrator import ManualClock, ReplicatedOrchestrator, TaskReaper, is_task_dirty
from manager.specs import normalize_service_spec
from manager.store import Store
from model import Cluster, Node, Service, Task, TaskState, new_id

SEC = 1_000_000_000


def make_service(name: str = "web", replicas: int | None = 3, *, mode: str = "replicated", restart: dict | None = None,
                 constraints: list[str] | None = None, memory: int = 0) -> Service:
    tmpl: dict = {"ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "1000"]}}
    tmpl["RestartPolicy"] = restart if restart is not None else {"Condition": "any", "Delay": 0}
    if constraints:
        tmpl["Placement"] = {"Constraints": constraints}
    if memory:
        tmpl["Resources"] = {"Reservations": {"MemoryBytes": memory}}
    spec = {"Name": name, "TaskTemplate": tmpl,
            "Mode": {"Global": {}} if mode == "global" else {"Replicated": {"Replicas": replicas}}}
    return Service(id=new_id(), spec=normalize_service_spec(spec))


async def swarm(nodes: int = 3, **node_kw) -> tuple[Harness, list[Node]]:
    h = Harness()
    made = [make_node(f"node{i}", **node_kw) for i in range(nodes)]
    await h.store.update(lambda tx: [tx.create(n) for n in made])
    h.store.view(h.scheduler.load)
    return h, made


def tasks_of(h: Harness, service: Service) -> list[Task]:
    return h.store.view(lambda tx: tx.find("tasks", service_id=service.id))


def running(h: Harness, service: Service) -> list[Task]:
    return [t for t in tasks_of(h, service)
            if t.status.state == TaskState.RUNNING and t.desired_state == TaskState.RUNNING]


async def change_service(h: Harness, service_id: str, edit) -> None:
    def fn(tx):
        svc = tx.get("services", service_id).copy()
        edit(svc)
        tx.update(svc)
    await h.store.update(fn)


async def change_node(h: Harness, node_id: str, edit) -> None:
    def fn(tx):
        node = tx.get("nodes", node_id).copy()
        edit(node)
        tx.update(node)
    await h.store.update(fn)


def scale(svc: Service, n: int) -> None:
    svc.spec["Mode"]["Replicated"]["Replicas"] = n


async def test_replicated_fills_slots_and_spreads() -> None:
    h, _nodes = await swarm(3)
    svc = make_service(replicas=6)
    await h.store.update(lambda tx: tx.create(svc))
    await h.settle()
    live = running(h, svc)
    assert sorted(t.slot for t in live) == [1, 2, 3, 4, 5, 6]
    assert sorted(Counter(t.node_id for t in live).values()) == [2, 2, 2]
    assert all(t.service_name == "web" and not is_task_dirty(svc, t) for t in live)


async def test_scale_down_removes_highest_slots_and_reaps() -> None:
    h, _ = await swarm(2)
    svc = make_service(replicas=5)
    await h.store.update(lambda tx: tx.create(svc))
    await h.settle()
    await change_service(h, svc.id, lambda s: scale(s, 2))
    await h.settle()
    assert sorted(t.slot for t in running(h, svc)) == [1, 2]
    assert sorted(t.slot for t in tasks_of(h, svc)) == [1, 2]  # removed tasks deleted once stopped
    await change_service(h, svc.id, lambda s: scale(s, 4))
    await h.settle()
    assert sorted(t.slot for t in running(h, svc)) == [1, 2, 3, 4]


async def test_failed_task_restarted_in_same_slot_with_delay() -> None:
    h, _ = await swarm(2)
    svc = make_service(replicas=2, restart={"Condition": "any", "Delay": 10 * SEC})
    await h.store.update(lambda tx: tx.create(svc))
    await h.settle()
    victim = next(t for t in running(h, svc) if t.slot == 1)
    h.agent.finish = lambda t: 3 if t.id == victim.id else None
    await h.settle()
    slot1 = [t for t in tasks_of(h, svc) if t.slot == 1]
    old = next(t for t in slot1 if t.id == victim.id)
    new = next(t for t in slot1 if t.id != victim.id)
    assert old.status.state == TaskState.FAILED and old.desired_state == TaskState.SHUTDOWN
    assert old.status.err == "task: non-zero exit (3)"
    assert new.desired_state == TaskState.READY and new.status.state == TaskState.READY  # prepared, waiting
    await h.advance(9)
    await h.settle()
    assert next(t for t in tasks_of(h, svc) if t.id == new.id).desired_state == TaskState.READY
    await h.advance(1)
    await h.settle()
    assert {t.slot for t in running(h, svc)} == {1, 2}
    assert next(t for t in tasks_of(h, svc) if t.id == new.id).status.state == TaskState.RUNNING


async def test_restart_conditions() -> None:
    h, _ = await swarm(1)
    none = make_service("none", 1, restart={"Condition": "none"})
    onfail = make_service("onfail", 1, restart={"Condition": "on-failure", "Delay": 0})
    anyc = make_service("any", 1, restart={"Condition": "any", "Delay": 0})
    await h.store.update(lambda tx: [tx.create(s) for s in (none, onfail, anyc)])
    await h.settle()
    first = {s.id: running(h, s)[0].id for s in (none, onfail, anyc)}
    h.agent.finish = lambda t: 0 if t.id in first.values() else None  # all exit 0 once
    await h.settle()
    assert len(tasks_of(h, none)) == 1 and tasks_of(h, none)[0].status.state == TaskState.COMPLETE
    assert len(tasks_of(h, onfail)) == 1  # success is not a failure
    assert len(running(h, anyc)) == 1 and len(tasks_of(h, anyc)) == 2
    crash = make_service("crash", 1, restart={"Condition": "on-failure", "Delay": 0})
    await h.store.update(lambda tx: tx.create(crash))
    await h.settle()
    doomed = running(h, crash)[0].id
    h.agent.finish = lambda t: 1 if t.id == doomed else None
    await h.settle()
    assert len(tasks_of(h, crash)) == 2 and running(h, crash)[0].id != doomed  # a failure is restarted


async def test_max_attempts_within_window() -> None:
    h, _ = await swarm(1)
    svc = make_service(replicas=1, restart={"Condition": "on-failure", "Delay": 0, "MaxAttempts": 2,
                                            "Window": 60 * SEC})
    await h.store.update(lambda tx: tx.create(svc))
    h.agent.fail = lambda t: "boom"
    await h.settle()
    slot = tasks_of(h, svc)
    assert len(slot) == 3 and all(t.status.state == TaskState.FAILED for t in slot)  # 1 + 2 restarts
    assert sum(t.desired_state == TaskState.RUNNING for t in slot) == 1  # the last stays, not restarted
    # Once the window has passed, a fresh failure may be restarted again.
    await h.advance(61)
    await h.replicated.reconcile()
    await h.settle()
    assert len([t for t in tasks_of(h, svc) if t.status.state == TaskState.FAILED]) >= 4


async def test_unlimited_attempts_keep_history_bounded_by_reaper() -> None:
    h, _ = await swarm(1)
    await h.store.update(lambda tx: tx.create(Cluster(id=new_id(), spec={
        "Name": "default", "Orchestration": {"TaskHistoryRetentionLimit": 3}})))
    svc = make_service(replicas=1)
    await h.store.update(lambda tx: tx.create(svc))
    h.agent.fail = lambda t: "boom"
    for _ in range(10):
        await h.round()
    assert len(tasks_of(h, svc)) <= 3
    h.agent.fail = lambda t: ""
    await h.settle()
    assert len(running(h, svc)) == 1 and len(tasks_of(h, svc)) <= 3


async def test_node_down_and_drain_move_tasks() -> None:
    h, nodes = await swarm(3)
    svc = make_service(replicas=6)
    await h.store.update(lambda tx: tx.create(svc))
    await h.settle()
    await change_node(h, nodes[0].id, lambda n: n.status.update(State="down"))
    await h.settle()
    live = running(h, svc)
    assert len(live) == 6 and all(t.node_id != nodes[0].id for t in live)
    old = [t for t in tasks_of(h, svc) if t.node_id == nodes[0].id]
    assert len(old) == 2 and all(t.desired_state == TaskState.SHUTDOWN for t in old)
    await change_node(h, nodes[1].id, lambda n: n.spec.update(Availability="drain"))
    await h.settle()
    live = running(h, svc)
    assert len(live) == 6 and {t.node_id for t in live} == {nodes[2].id}
    drained = [t for t in tasks_of(h, svc) if t.node_id == nodes[1].id]
    assert drained and all(t.status.state == TaskState.SHUTDOWN for t in drained)


async def test_removed_node_tasks_orphaned_and_replaced() -> None:
    h, nodes = await swarm(2)
    svc = make_service(replicas=2)
    await h.store.update(lambda tx: tx.create(svc))
    await h.settle()
    victim = nodes[0]
    on_victim = [t.id for t in tasks_of(h, svc) if t.node_id == victim.id]
    await h.store.update(lambda tx: tx.delete("nodes", victim.id))
    await h.settle()
    assert len(running(h, svc)) == 2
    left = {t.id: t for t in tasks_of(h, svc)}
    for tid in on_victim:
        assert tid not in left or left[tid].status.state == TaskState.ORPHANED


async def test_pending_until_node_fits_then_placed() -> None:
    h, nodes = await swarm(1, memory=1 << 30)
    svc = make_service(replicas=2, memory=1 << 31)
    await h.store.update(lambda tx: tx.create(svc))
    await h.settle()
    pending = tasks_of(h, svc)
    assert len(pending) == 2 and all(t.status.state == TaskState.PENDING for t in pending)
    assert pending[0].status.err == "no suitable node (1 node insufficient memory)"
    await change_node(h, nodes[0].id, lambda n: n.description["Resources"].update(MemoryBytes=1 << 33))
    for event in h._sub.drain():
        h.scheduler.handle(event)
    await h.settle()
    assert len(running(h, svc)) == 2


async def test_global_follows_nodes() -> None:
    h, nodes = await swarm(3)
    svc = make_service("agent", mode="global", constraints=["node.labels.skip!=yes"])
    await h.store.update(lambda tx: tx.create(svc))
    await h.settle()
    live = running(h, svc)
    assert sorted(t.node_id for t in live) == sorted(n.id for n in nodes) and all(t.slot == 0 for t in live)
    newcomer = make_node("node9")
    await h.store.update(lambda tx: tx.create(newcomer))
    await h.settle()
    assert newcomer.id in {t.node_id for t in running(h, svc)}
    await change_node(h, nodes[0].id, lambda n: n.spec.update(Availability="drain"))
    await h.settle()
    assert nodes[0].id not in {t.node_id for t in running(h, svc)}
    await change_node(h, nodes[0].id, lambda n: n.spec.update(Availability="active"))
    await h.settle()
    assert nodes[0].id in {t.node_id for t in running(h, svc)}
    await change_node(h, nodes[1].id, lambda n: n.spec["Labels"].update(skip="yes"))
    await h.settle()
    assert nodes[1].id not in {t.node_id for t in running(h, svc)}
    await change_node(h, nodes[2].id, lambda n: n.spec.update(Availability="pause"))
    await h.settle()
    assert nodes[2].id in {t.node_id for t in running(h, svc)}  # pause keeps what runs
    await h.store.update(lambda tx: tx.delete("nodes", newcomer.id))
    await h.settle()
    assert sorted(t.node_id for t in running(h, svc)) == sorted([nodes[0].id, nodes[2].id])
    assert len(running(h, svc)) == 2


async def test_global_restart_on_same_node() -> None:
    h, _nodes = await swarm(2)
    svc = make_service("agent", mode="global")
    await h.store.update(lambda tx: tx.create(svc))
    await h.settle()
    victim = running(h, svc)[0]
    h.agent.finish = lambda t: 1 if t.id == victim.id else None
    await h.settle()
    again = [t for t in running(h, svc) if t.node_id == victim.node_id]
    assert len(again) == 1 and again[0].id != victim.id


async def test_service_removed_tasks_removed() -> None:
    h, _ = await swarm(2)
    svc = make_service(replicas=3)
    await h.store.update(lambda tx: tx.create(svc))
    await h.settle()
    await h.store.update(lambda tx: tx.delete("services", svc.id))
    await h.settle()
    assert tasks_of(h, svc) == []


async def test_thousands_of_tasks_on_many_nodes() -> None:
    h, nodes = await swarm(200)
    services = [make_service(f"s{i}", replicas=500) for i in range(4)]
    await h.store.update(lambda tx: [tx.create(s) for s in services])
    await h.settle()
    per_node = Counter(t.node_id for s in services for t in running(h, s))
    assert sum(per_node.values()) == 2000 and max(per_node.values()) - min(per_node.values()) <= 1
    await change_node(h, nodes[0].id, lambda n: n.status.update(State="down"))
    await h.settle()
    assert sum(len(running(h, s)) for s in services) == 2000


async def test_run_loops_converge_on_their_own() -> None:
    clock = ManualClock()
    store = Store(clock=clock.now)
    h = Harness(store, clock)
    node = make_node("n1")
    await store.update(lambda tx: tx.create(node))
    orch = ReplicatedOrchestrator(store, clock)
    reaper = TaskReaper(store, clock)
    svc = make_service(replicas=3)
    _, sub = store.view_and_watch(lambda tx: None, tables=("tasks",))
    async with asyncio.TaskGroup() as tg:
        loops = [tg.create_task(orch.run()), tg.create_task(reaper.run())]
        await store.update(lambda tx: tx.create(svc))
        async with asyncio.timeout(5):
            while len(tasks_of(h, svc)) < 3:
                await sub.wait()
                sub.drain()
        for loop in loops:
            loop.cancel()
    assert sorted(t.slot for t in tasks_of(h, svc)) == [1, 2, 3]


async def test_run_loop_wakes_for_a_restart_delay_without_events() -> None:
    clock = ManualClock()
    store = Store(clock=clock.now)
    h = Harness(store, clock)
    await store.update(lambda tx: tx.create(make_node("n1")))
    h.store.view(h.scheduler.load)
    svc = make_service(replicas=1, restart={"Condition": "any", "Delay": 30 * SEC})
    await store.update(lambda tx: tx.create(svc))
    await h.settle()
    first = running(h, svc)[0]
    h.agent.finish = lambda t: 1 if t.id == first.id else None
    await h.agent.step()  # the task fails
    orch = ReplicatedOrchestrator(store, clock)
    _, sub = store.view_and_watch(lambda tx: None, tables=("tasks",))
    async with asyncio.TaskGroup() as tg:
        loop = tg.create_task(orch.run())
        async with asyncio.timeout(5):
            while not any(t.desired_state == TaskState.READY for t in tasks_of(h, svc)):
                await sub.wait()
                sub.drain()
        replacement = next(t for t in tasks_of(h, svc) if t.desired_state == TaskState.READY)
        assert orch.wakes == {svc.id: clock.now() + 30}
        await clock.advance(29)
        assert tasks_of(h, svc) and next(t for t in tasks_of(h, svc)
                                         if t.id == replacement.id).desired_state == TaskState.READY
        await clock.advance(1)
        async with asyncio.timeout(5):
            while next(t for t in tasks_of(h, svc) if t.id == replacement.id).desired_state != TaskState.RUNNING:
                await sub.wait()
                sub.drain()
        loop.cancel()


async def test_default_history_limit_is_five_per_slot() -> None:
    h, _ = await swarm(1)
    svc = make_service(replicas=2, restart={"Condition": "any", "Delay": 0})
    await h.store.update(lambda tx: tx.create(svc))
    await h.settle()
    h.agent.finish = lambda t: 1  # every task crashes once running
    for _ in range(40):
        await h.round()
    per_slot = Counter(t.slot for t in tasks_of(h, svc))
    assert set(per_slot) == {1, 2} and max(per_slot.values()) <= 5
    assert min(per_slot.values()) >= 4  # history is kept, up to the limit


async def test_service_status_counts() -> None:
    from manager.api.tasks import service_status

    h, nodes = await swarm(2)
    rep = make_service("rep", replicas=3)
    glob = make_service("glob", mode="global")
    await h.store.update(lambda tx: [tx.create(rep), tx.create(glob)])
    await h.settle()
    assert h.store.view(lambda tx: service_status(tx, rep)) == {
        "RunningTasks": 3, "DesiredTasks": 3, "CompletedTasks": 0}
    assert h.store.view(lambda tx: service_status(tx, glob))["DesiredTasks"] == 2
    await change_node(h, nodes[0].id, lambda n: n.status.update(State="down"))
    status = h.store.view(lambda tx: service_status(tx, rep))
    assert status["RunningTasks"] < 3  # tasks on a down node do not count as running


async def test_a_failing_service_does_not_stop_the_loop(caplog) -> None:
    h, _ = await swarm(1)
    good, bad = make_service("good", 1), make_service("bad", 1)
    await h.store.update(lambda tx: [tx.create(good), tx.create(bad)])
    original = h.replicated.reconcile_service

    def broken(tx, service_id, now):
        if service_id == bad.id:
            raise RuntimeError("bug")
        return original(tx, service_id, now)

    h.replicated.reconcile_service = broken  # type: ignore[method-assign]
    await h.replicated.reconcile()
    assert len(tasks_of(h, good)) == 1 and bad.id in h.replicated.wakes
    assert "reconciling service" in caplog.text


def test_a_task_that_no_longer_matches_its_services_endpoint_is_dirty() -> None:
    template = {"ContainerSpec": {"Image": "busybox:latest"}}
    ingress = {"Network": {"ID": "ing", "Spec": {"Name": "ingress", "Ingress": True}}, "Addresses": ["10.0.0.5/24"]}

    def service(*ports: dict) -> Service:
        return Service(id="s", spec={"Name": "web", "TaskTemplate": template, "EndpointSpec": {"Ports": list(ports)}})

    def task(state: TaskState, attachments: list | None = None, endpoint: dict | None = None, node: str = "") -> Task:
        t = Task(id=new_id(), spec=template, service_id="s", node_id=node, desired_state=TaskState.RUNNING)
        t.status.state = state
        t.networks_attachments = attachments or []
        t.endpoint = endpoint or {}
        return t

    published = service({"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080})
    assert not is_task_dirty(service(), task(TaskState.RUNNING, node="n1"))
    assert is_task_dirty(published, task(TaskState.RUNNING, node="n1")), "published later: it needs ingress"
    assert not is_task_dirty(published, task(TaskState.NEW)), "the allocator has not had its say yet"
    assert not is_task_dirty(published, task(TaskState.RUNNING, [ingress], node="n1"))
    assert is_task_dirty(service(), task(TaskState.RUNNING, [ingress], node="n1")), "no longer published"
    host = {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 9090, "PublishMode": "host"}
    placed = task(TaskState.RUNNING, endpoint={"Ports": [host]}, node="n1")
    assert not is_task_dirty(service(host), placed)
    assert is_task_dirty(service({**host, "PublishedPort": 9191}), placed), "another host port"
    assert not is_task_dirty(service(host), task(TaskState.PENDING)), "the scheduler gives it its ports"
