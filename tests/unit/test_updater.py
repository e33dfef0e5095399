"""Rolling updates: parallelism, delay, order, monitor, failure actions, rollback, supersede."""

import copy

from manager.orchestrator import is_task_dirty, rollback_service, update_service_spec
from manager.orchestrator.simulation import Harness, make_node
from manager.specs import SpecError, normalize_service_spec
from model import Service, Task, TaskState, new_id

SEC = 1_000_000_000


def make_service(replicas: int = 4, update: dict | None = None, rollback: dict | None = None,
                 image: str = "app:1") -> Service:
    spec = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": image},
                                            "RestartPolicy": {"Condition": "any", "Delay": 5 * SEC}},
            "Mode": {"Replicated": {"Replicas": replicas}}}
    if update is not None:
        spec["UpdateConfig"] = update
    if rollback is not None:
        spec["RollbackConfig"] = rollback
    return Service(id=new_id(), spec=normalize_service_spec(spec))


async def start(replicas: int = 4, nodes: int = 2, **kw) -> tuple[Harness, Service]:
    h = Harness()
    made = [make_node(f"n{i}") for i in range(nodes)]
    svc = make_service(replicas, **kw)
    await h.store.update(lambda tx: [*(tx.create(n) for n in made), tx.create(svc)])
    h.store.view(h.scheduler.load)
    await h.settle()
    return h, svc


def current(h: Harness, svc: Service) -> Service:
    return h.store.view(lambda tx: tx.get("services", svc.id))


def tasks(h: Harness, svc: Service) -> list[Task]:
    return h.store.view(lambda tx: tx.find("tasks", service_id=svc.id))


def live(h: Harness, svc: Service) -> list[Task]:
    return [t for t in tasks(h, svc) if t.desired_state == TaskState.RUNNING and t.status.state == TaskState.RUNNING]


def image(task: Task) -> str:
    return task.spec["ContainerSpec"]["Image"]


async def set_image(h: Harness, svc: Service, img: str, force: bool = False) -> None:
    def fn(tx):
        cur = tx.get("services", svc.id)
        spec = copy.deepcopy(cur.spec)
        spec["TaskTemplate"]["ContainerSpec"]["Image"] = img
        if force:
            spec["TaskTemplate"]["ForceUpdate"] += 1
        tx.update(update_service_spec(cur, spec, h.clock.now()))
    await h.store.update(fn)


async def run_for(h: Harness, seconds: float, step: float = 1.0) -> None:
    """Let virtual time pass, settling the swarm after every step."""
    elapsed = 0.0
    while elapsed < seconds:
        await h.settle()
        await h.advance(step)
        elapsed += step
    await h.settle()


def state(h: Harness, svc: Service) -> str:
    return (current(h, svc).update_status or {}).get("State", "")


async def test_stop_first_one_at_a_time_then_completed() -> None:
    h, svc = await start(4, update={"Parallelism": 1, "Monitor": 2 * SEC, "Delay": 0})
    old_ids = {t.id for t in live(h, svc)}
    await set_image(h, svc, "app:2")
    await h.settle()
    status = current(h, svc).update_status
    assert status["State"] == "updating" and status["Message"] == "update in progress"
    # At most one slot is being replaced at a time: 3 old tasks still run.
    assert sum(image(t) == "app:1" for t in live(h, svc)) == 3
    assert sum(image(t) == "app:2" for t in live(h, svc)) == 1
    await run_for(h, 12)
    assert sorted(image(t) for t in live(h, svc)) == ["app:2"] * 4
    assert sorted(t.slot for t in live(h, svc)) == [1, 2, 3, 4]
    status = current(h, svc).update_status
    assert status["State"] == "completed" and status["Message"] == "update completed" and status["CompletedAt"]
    # stop-first: each old task was stopped before its replacement started
    for old in old_ids:
        slot = next(t.slot for t in tasks(h, svc) if t.id == old)
        new = next(t.id for t in live(h, svc) if t.slot == slot)
        assert h.agent.log.index(("stop", old)) < h.agent.log.index(("start", new))
    assert all(not is_task_dirty(current(h, svc), t) for t in live(h, svc))


async def test_start_first_overlaps() -> None:
    h, svc = await start(2, update={"Parallelism": 1, "Monitor": 1 * SEC, "Order": "start-first"})
    await set_image(h, svc, "app:2")
    await h.settle()
    # The replacement started while the old task of its slot still ran; then the old one stopped.
    new = next(t for t in live(h, svc) if image(t) == "app:2")
    old = next(t for t in tasks(h, svc) if t.slot == new.slot and t.id != new.id)
    assert old.desired_state == TaskState.SHUTDOWN
    assert h.agent.log.index(("start", new.id)) < h.agent.log.index(("stop", old.id))
    assert sum(image(t) == "app:1" for t in live(h, svc)) == 1
    await run_for(h, 6)
    assert sorted(image(t) for t in live(h, svc)) == ["app:2", "app:2"]
    assert state(h, svc) == "completed"


async def test_parallelism_and_delay() -> None:
    h, svc = await start(6, nodes=3, update={"Parallelism": 2, "Delay": 10 * SEC, "Monitor": 1 * SEC})
    await set_image(h, svc, "app:2")
    await h.settle()
    await h.advance(1)
    await h.settle()
    assert sum(image(t) == "app:2" for t in live(h, svc)) == 2
    await h.advance(5)
    await h.settle()
    assert sum(image(t) == "app:2" for t in live(h, svc)) == 2  # still in the delay
    await h.advance(5)
    await h.settle()
    await h.advance(1)
    await h.settle()
    assert sum(image(t) == "app:2" for t in live(h, svc)) == 4
    await run_for(h, 15)
    assert sum(image(t) == "app:2" for t in live(h, svc)) == 6 and state(h, svc) == "completed"


async def test_failure_pauses_update() -> None:
    h, svc = await start(4, update={"Parallelism": 1, "Monitor": 5 * SEC, "FailureAction": "pause"})
    h.agent.fail = lambda t: "bad image" if image(t) == "app:2" else ""
    await set_image(h, svc, "app:2")
    await run_for(h, 10)
    status = current(h, svc).update_status
    assert status["State"] == "paused"
    assert status["Message"].startswith("update paused due to failure or early termination of task ")
    # Only the first slot was tried; three old tasks keep running.
    assert sum(image(t) == "app:1" for t in live(h, svc)) == 3
    await run_for(h, 10)
    assert state(h, svc) == "paused" and sum(image(t) == "app:1" for t in live(h, svc)) == 3


async def test_failure_during_monitor_counts() -> None:
    h, svc = await start(3, update={"Parallelism": 1, "Monitor": 10 * SEC})
    await set_image(h, svc, "app:2")
    await h.settle()
    first_new = next(t for t in live(h, svc) if image(t) == "app:2")
    await h.advance(3)
    h.agent.finish = lambda t: 1 if t.id == first_new.id else None
    await h.settle()
    assert state(h, svc) == "paused"


async def test_continue_and_max_failure_ratio() -> None:
    h, svc = await start(4, update={"Parallelism": 1, "Monitor": 1 * SEC, "FailureAction": "pause",
                                    "MaxFailureRatio": 0.5})
    failed_once: set[int] = set()

    def flaky(t: Task) -> str:
        if image(t) == "app:2" and t.slot == 2 and 2 not in failed_once:
            failed_once.add(2)
            return "flaky"
        return ""

    h.agent.fail = flaky
    await set_image(h, svc, "app:2")
    await run_for(h, 20)
    assert state(h, svc) == "completed"  # 1 failure in 4 slots is within 0.5
    assert sorted(image(t) for t in live(h, svc)) == ["app:2"] * 4

    h2, svc2 = await start(3, update={"Parallelism": 1, "Monitor": 1 * SEC, "FailureAction": "continue"})
    h2.agent.fail = lambda t: "bad" if image(t) == "app:2" else ""
    await set_image(h2, svc2, "app:2")
    await run_for(h2, 20)
    assert all(image(t) == "app:2" for t in tasks(h2, svc2) if t.desired_state <= TaskState.RUNNING)


async def test_failure_action_rollback() -> None:
    h, svc = await start(3, update={"Parallelism": 1, "Monitor": 2 * SEC, "FailureAction": "rollback"},
                         rollback={"Parallelism": 0, "Monitor": 1 * SEC})
    h.agent.fail = lambda t: "crash" if image(t) == "app:2" else ""
    await set_image(h, svc, "app:2")
    await run_for(h, 4)
    svc_now = current(h, svc)
    assert svc_now.spec["TaskTemplate"]["ContainerSpec"]["Image"] == "app:1"
    await run_for(h, 10)
    status = current(h, svc).update_status
    assert status["State"] == "rollback_completed" and status["Message"] == "rollback completed"
    assert sorted(image(t) for t in live(h, svc)) == ["app:1"] * 3


async def test_manual_rollback() -> None:
    h, svc = await start(2, update={"Parallelism": 1, "Monitor": 1 * SEC})
    with_no_previous = current(h, svc)
    try:
        rollback_service(with_no_previous, h.clock.now())
        raise AssertionError("rollback without a previous spec must fail")
    except SpecError as exc:
        assert "does not have a previous spec" in exc.message
    await set_image(h, svc, "app:2")
    await run_for(h, 8)
    assert state(h, svc) == "completed"
    await h.store.update(lambda tx: tx.update(rollback_service(tx.get("services", svc.id), h.clock.now())))
    assert current(h, svc).update_status["Message"] == "manually requested rollback"
    await h.settle()
    assert state(h, svc) == "rollback_started"
    await run_for(h, 20)
    assert state(h, svc) == "rollback_completed"
    assert sorted(image(t) for t in live(h, svc)) == ["app:1"] * 2
    assert current(h, svc).previous_spec["TaskTemplate"]["ContainerSpec"]["Image"] == "app:2"


async def test_new_update_supersedes_one_in_flight() -> None:
    h, svc = await start(4, update={"Parallelism": 1, "Delay": 5 * SEC, "Monitor": 1 * SEC})
    await set_image(h, svc, "app:2")
    await run_for(h, 3)
    assert 0 < sum(image(t) == "app:2" for t in live(h, svc)) < 4
    await set_image(h, svc, "app:3")
    await run_for(h, 40)
    assert sorted(image(t) for t in live(h, svc)) == ["app:3"] * 4
    assert state(h, svc) == "completed"


async def test_force_update_replaces_every_task() -> None:
    h, svc = await start(2, update={"Parallelism": 0, "Monitor": 1 * SEC})
    before = {t.id for t in live(h, svc)}
    await set_image(h, svc, "app:1", force=True)
    svc_now = current(h, svc)
    assert all(is_task_dirty(svc_now, t) for t in live(h, svc))
    await run_for(h, 5)
    after = {t.id for t in live(h, svc)}
    assert len(after) == 2 and not after & before and state(h, svc) == "completed"


async def test_paused_update_resumes_on_new_spec() -> None:
    h, svc = await start(2, update={"Parallelism": 1, "Monitor": 1 * SEC})
    h.agent.fail = lambda t: "bad" if image(t) == "app:2" else ""
    await set_image(h, svc, "app:2")
    await run_for(h, 5)
    assert state(h, svc) == "paused"
    h.agent.fail = lambda t: ""
    await set_image(h, svc, "app:3")
    await run_for(h, 10)
    assert state(h, svc) == "completed" and sorted(image(t) for t in live(h, svc)) == ["app:3"] * 2


async def test_scale_only_change_is_not_an_update() -> None:
    h, svc = await start(2)
    def fn(tx):
        cur = tx.get("services", svc.id)
        spec = copy.deepcopy(cur.spec)
        spec["Mode"]["Replicated"]["Replicas"] = 3
        tx.update(update_service_spec(cur, spec, h.clock.now()))
    await h.store.update(fn)
    await h.settle()
    assert current(h, svc).update_status is None and len(live(h, svc)) == 3


async def test_global_service_rolling_update() -> None:
    h = Harness()
    nodes = [make_node(f"n{i}") for i in range(3)]
    svc = Service(id=new_id(), spec=normalize_service_spec({
        "Name": "g", "Mode": {"Global": {}}, "UpdateConfig": {"Parallelism": 1, "Monitor": SEC},
        "TaskTemplate": {"ContainerSpec": {"Image": "app:1"}}}))
    await h.store.update(lambda tx: [*(tx.create(n) for n in nodes), tx.create(svc)])
    h.store.view(h.scheduler.load)
    await h.settle()
    await set_image(h, svc, "app:2")
    await h.settle()
    assert sum(image(t) == "app:2" for t in live(h, svc)) == 1
    await run_for(h, 10)
    got = live(h, svc)
    assert sorted(image(t) for t in got) == ["app:2"] * 3 and len({t.node_id for t in got}) == 3
    assert state(h, svc) == "completed"
