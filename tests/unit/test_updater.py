"""Rolling updates: parallelism, delay, order, monitor, failure actions, rollback, supersede."""

import copy
import itertools
from typing import Any

from bench.support.swarm_sim import Harness, make_node
from manager.orchestrator import is_task_dirty, rollback_service, update_service_spec
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


def update_status(h: Harness, svc: Service) -> dict[str, Any]:
    status = current(h, svc).update_status
    assert status is not None, "the service has no UpdateStatus"
    return status


async def test_stop_first_one_at_a_time_then_completed() -> None:
    h, svc = await start(4, update={"Parallelism": 1, "Monitor": 2 * SEC, "Delay": 0})
    old_ids = {t.id for t in live(h, svc)}
    await set_image(h, svc, "app:2")
    await h.settle()
    # With no Delay each lane takes the next slot as soon as its replacement runs: every slot
    # is replaced already, but the update is not completed until the monitor windows are over.
    assert sorted(image(t) for t in live(h, svc)) == ["app:2"] * 4
    status = update_status(h, svc)
    assert status["State"] == "updating" and status["Message"] == "update in progress"
    # At most one slot was being replaced at a time: an old task is stopped only once the
    # replacement of the previous slot runs.
    replaced_old = [tid for verb, tid in h.agent.log if verb == "stop"]
    new_ids = {t.id for t in live(h, svc)}
    started_new = [tid for verb, tid in h.agent.log if verb == "start" and tid in new_ids]
    assert len(replaced_old) == len(started_new) == 4
    for n in range(1, 4):
        assert h.agent.log.index(("start", started_new[n - 1])) < h.agent.log.index(("stop", replaced_old[n]))
    await run_for(h, 12)
    assert sorted(image(t) for t in live(h, svc)) == ["app:2"] * 4
    assert sorted(t.slot for t in live(h, svc)) == [1, 2, 3, 4]
    status = update_status(h, svc)
    assert status["State"] == "completed" and status["Message"] == "update completed" and status["CompletedAt"]
    # stop-first: each old task was stopped before its replacement started
    for old in old_ids:
        slot = next(t.slot for t in tasks(h, svc) if t.id == old)
        new = next(t.id for t in live(h, svc) if t.slot == slot)
        assert h.agent.log.index(("stop", old)) < h.agent.log.index(("start", new))
    assert all(not is_task_dirty(current(h, svc), t) for t in live(h, svc))


async def test_start_first_overlaps() -> None:
    h, svc = await start(2, update={"Parallelism": 1, "Monitor": 1 * SEC, "Delay": 5 * SEC,
                                    "Order": "start-first"})
    await set_image(h, svc, "app:2")
    await h.settle()
    # The replacement started while the old task of its slot still ran; then the old one stopped.
    new = next(t for t in live(h, svc) if image(t) == "app:2")
    old = next(t for t in tasks(h, svc) if t.slot == new.slot and t.id != new.id)
    assert old.desired_state == TaskState.SHUTDOWN
    assert h.agent.log.index(("start", new.id)) < h.agent.log.index(("stop", old.id))
    assert sum(image(t) == "app:1" for t in live(h, svc)) == 1
    await run_for(h, 8)
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
    status = update_status(h, svc)
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
    status = update_status(h, svc)
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
    assert update_status(h, svc)["Message"] == "manually requested rollback"
    await h.settle()
    assert state(h, svc) == "rollback_started"
    await run_for(h, 20)
    assert state(h, svc) == "rollback_completed"
    assert sorted(image(t) for t in live(h, svc)) == ["app:1"] * 2
    previous = current(h, svc).previous_spec
    assert previous is not None and previous["TaskTemplate"]["ContainerSpec"]["Image"] == "app:2"


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
        "Name": "g", "Mode": {"Global": {}}, "UpdateConfig": {"Parallelism": 1, "Monitor": SEC, "Delay": 2 * SEC},
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


# -- lanes are freed when the replacement runs; the monitor window only judges -----------------

STEP = 0.25  # virtual seconds per harness round in the timed tests: each task state change takes one


async def timed_update(h: Harness, svc: Service, img: str, seconds: float) -> dict[str, dict[str, float]]:
    """Roll `img` out one harness round per STEP of virtual time; return, per task of `img`, when
    it was first seen created and running, plus {"status": {state: first time seen}}."""
    seen: dict[str, dict[str, float]] = {"status": {}}
    await set_image(h, svc, img)
    elapsed = 0.0
    while elapsed <= seconds:
        await h.round()
        now = h.clock.now()
        for t in tasks(h, svc):
            if image(t) == img:
                times = seen.setdefault(t.id, {"created": now})
                if t.status.state == TaskState.RUNNING:
                    times.setdefault("running", now)
        seen["status"].setdefault(state(h, svc), now)
        await h.advance(STEP)
        elapsed += STEP
    return seen


async def test_lanes_are_freed_when_replacements_run_not_after_the_monitor_window() -> None:
    h, svc = await start(6, nodes=3, update={"Parallelism": 2, "Delay": 1 * SEC, "Monitor": 5 * SEC})
    t0 = h.clock.now()
    seen = await timed_update(h, svc, "app:2", 20)
    status_seen = seen.pop("status")
    assert sorted(image(t) for t in live(h, svc)) == ["app:2"] * 6
    assert len(seen) == 6  # no replacement failed or was made twice
    # Three batches of two, each created once the previous batch runs (+ Delay), not once its
    # 5 s monitor window is over.
    by_created: dict[float, list[dict[str, float]]] = {}
    for times in seen.values():
        by_created.setdefault(times["created"], []).append(times)
    batches = [by_created[k] for k in sorted(by_created)]
    assert [len(b) for b in batches] == [2, 2, 2]
    for before, after in itertools.pairwise(batches):
        ran = max(t["running"] for t in before)
        gap = after[0]["created"] - ran
        assert 1.0 <= gap <= 1.0 + 2 * STEP, gap  # Delay, plus the round that notices RUNNING
    start_time = max(t["running"] - t["created"] for t in seen.values())
    all_running = max(t["running"] for t in seen.values())
    assert all_running - t0 <= 3 * (start_time + 1.0 + 2 * STEP)
    assert all_running - t0 < 2 * (5 + 1)  # holding lanes for the window would take at least this
    # UpdateStatus completed only once the last replacement has run through its window.
    assert status_seen["updating"] < all_running
    completed_at = status_seen["completed"]
    assert all_running + 5 <= completed_at <= all_running + 5 + 2 * STEP
    assert update_status(h, svc)["CompletedAt"]


async def test_rollback_completed_only_after_the_last_window() -> None:
    h, svc = await start(3, update={"Parallelism": 1, "Monitor": 2 * SEC},
                         rollback={"Parallelism": 0, "Monitor": 4 * SEC})
    await set_image(h, svc, "app:2")
    await run_for(h, 5)
    assert state(h, svc) == "completed"
    await h.store.update(lambda tx: tx.update(rollback_service(tx.get("services", svc.id), h.clock.now())))
    await h.settle()
    assert sorted(image(t) for t in live(h, svc)) == ["app:1"] * 3  # all at once
    await h.advance(3.5)
    await h.settle()
    assert state(h, svc) == "rollback_started"  # still inside the rollback's 4 s window
    await h.advance(0.5)
    await h.settle()
    assert state(h, svc) == "rollback_completed"


async def test_zero_monitor_completes_when_the_last_replacement_runs() -> None:
    h, svc = await start(3, update={"Parallelism": 1, "Monitor": 0})
    await set_image(h, svc, "app:2")
    await h.settle()
    assert sorted(image(t) for t in live(h, svc)) == ["app:2"] * 3 and state(h, svc) == "completed"


async def fail_after_lanes_freed(update: dict, rollback: dict | None = None, replicas: int = 3
                                 ) -> tuple[Harness, Service, list[Task]]:
    """Roll app:2 out with no Delay: every slot is replaced (each lane freed) in one settle,
    while all replacements are still inside their monitor windows. Returns them by slot."""
    h, svc = await start(replicas, update=update, rollback=rollback)
    await set_image(h, svc, "app:2")
    await h.settle()
    replaced = sorted(live(h, svc), key=lambda t: t.slot)
    assert [image(t) for t in replaced] == ["app:2"] * replicas
    assert state(h, svc) == "updating"
    await h.advance(3)
    await h.settle()
    assert state(h, svc) == "updating"
    return h, svc, replaced


async def test_failure_in_window_after_lane_freed_pauses() -> None:
    h, svc, replaced = await fail_after_lanes_freed({"Parallelism": 1, "Monitor": 10 * SEC})
    h.agent.finish = lambda t: 1 if t.id == replaced[0].id else None
    await h.settle()
    status = update_status(h, svc)
    assert status["State"] == "paused"
    assert status["Message"] == f"update paused due to failure or early termination of task {replaced[0].id}"


async def test_early_exit_in_window_counts_as_failure() -> None:
    h, svc, replaced = await fail_after_lanes_freed({"Parallelism": 1, "Monitor": 10 * SEC})
    h.agent.finish = lambda t: 0 if t.id == replaced[2].id else None  # exit 0 is early termination too
    await h.settle()
    assert state(h, svc) == "paused" and replaced[2].id in update_status(h, svc)["Message"]


async def test_failure_after_the_window_does_not_count() -> None:
    h, svc, replaced = await fail_after_lanes_freed({"Parallelism": 1, "Monitor": 5 * SEC})
    await h.advance(2)
    await h.settle()
    assert state(h, svc) == "completed"
    h.agent.finish = lambda t: 1 if t.id == replaced[0].id else None
    await run_for(h, 8)
    assert state(h, svc) == "completed"  # the restart policy handles it; the update is over
    assert sorted(image(t) for t in live(h, svc)) == ["app:2"] * 3


async def test_failure_in_window_after_lane_freed_rolls_back() -> None:
    h, svc, replaced = await fail_after_lanes_freed(
        {"Parallelism": 1, "Monitor": 10 * SEC, "FailureAction": "rollback"},
        rollback={"Parallelism": 0, "Monitor": 1 * SEC})
    h.agent.finish = lambda t: 1 if t.id == replaced[1].id else None
    await h.settle()
    svc_now = current(h, svc)
    assert svc_now.spec["TaskTemplate"]["ContainerSpec"]["Image"] == "app:1"
    assert svc_now.update_status is not None
    assert svc_now.update_status["State"] == "rollback_started"
    assert svc_now.update_status["Message"] == \
        f"update rolled back due to failure or early termination of task {replaced[1].id}"
    h.agent.finish = lambda t: None
    await run_for(h, 5)
    assert state(h, svc) == "rollback_completed"
    assert sorted(image(t) for t in live(h, svc)) == ["app:1"] * 3


async def test_failures_in_window_count_toward_max_failure_ratio() -> None:
    # 1 failure in 4 slots (0.25) is within 0.3; a second one (0.5) is not.
    h, svc, replaced = await fail_after_lanes_freed(
        {"Parallelism": 1, "Monitor": 10 * SEC, "MaxFailureRatio": 0.3}, replicas=4)
    h.agent.finish = lambda t: 1 if t.id == replaced[0].id else None
    await h.settle()
    assert state(h, svc) == "updating"
    h.agent.finish = lambda t: 1 if t.id in (replaced[0].id, replaced[3].id) else None
    await h.settle()
    status = update_status(h, svc)
    assert status["State"] == "paused" and replaced[3].id in status["Message"]


async def test_continue_keeps_watching_until_the_last_window() -> None:
    h, svc, replaced = await fail_after_lanes_freed(
        {"Parallelism": 1, "Monitor": 10 * SEC, "FailureAction": "continue"})
    h.agent.finish = lambda t: 1 if t.id == replaced[0].id else None
    await h.settle()
    h.agent.finish = lambda t: None
    assert state(h, svc) == "updating"
    await h.advance(6.5)  # 9.5 s after the last replacement ran
    await h.settle()
    assert state(h, svc) == "updating"
    await h.advance(0.5)
    await h.settle()
    assert state(h, svc) == "completed"


async def test_new_spec_supersedes_an_update_being_monitored() -> None:
    h, svc, replaced = await fail_after_lanes_freed({"Parallelism": 1, "Monitor": 10 * SEC})
    await set_image(h, svc, "app:3")
    await h.settle()
    assert sorted(image(t) for t in live(h, svc)) == ["app:3"] * 3
    # The app:2 replacements were stopped on purpose: that is no failure of either update.
    gone = {t.id: t for t in tasks(h, svc)}
    assert all(gone[t.id].status.state == TaskState.SHUTDOWN for t in replaced)
    assert state(h, svc) == "updating"
    await h.advance(10)
    await h.settle()
    assert state(h, svc) == "completed"


async def test_scale_during_a_rollout_keeps_it_marked_in_progress() -> None:
    """A scale-only spec change clears UpdateStatus (a new spec) but leaves the TaskTemplate, so
    the rollout goes on: it is marked in progress again (as swarmkit's fresh updater would), and
    it ends completed, which the table only allows from updating."""
    h, svc = await start(4, update={"Parallelism": 1, "Delay": 5 * SEC, "Monitor": 1 * SEC})
    await set_image(h, svc, "app:2")
    await run_for(h, 3)
    assert state(h, svc) == "updating" and 0 < sum(image(t) == "app:2" for t in live(h, svc)) < 4

    def scale(tx):
        cur = tx.get("services", svc.id)
        spec = copy.deepcopy(cur.spec)
        spec["Mode"]["Replicated"]["Replicas"] = 5
        tx.update(update_service_spec(cur, spec, h.clock.now()))
    await h.store.update(scale)
    assert current(h, svc).update_status is None
    await h.settle()
    assert state(h, svc) == "updating"
    await run_for(h, 40)
    assert state(h, svc) == "completed" and sorted(image(t) for t in live(h, svc)) == ["app:2"] * 5
