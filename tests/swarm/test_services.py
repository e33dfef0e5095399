"""Services on the lab with real containers: create, scale, update with rollback, global services
following node changes, drain, and a worker's crash plus partition."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cli.lab import Lab
from tests.swarm.helpers import api, converged, eventually, node_update, running, set_heartbeat, swarm_lab

IMAGE = "busybox:latest"
# Stops at once on SIGTERM: `wait` is interrupted by the trap.
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
MANAGER = "manager-1"
# A registry address on the host's own loopback where nothing listens: the pull fails at once,
# and no test ever reaches for a registry outside the machine.
MISSING_IMAGE = "127.0.0.1:1/nope:missing"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with swarm_lab("v", tmp_path_factory.mktemp("img"), managers=1, workers=2, image=IMAGE) as the_lab:
        set_heartbeat(the_lab, MANAGER, 1)
        yield the_lab


def create(lab: Lab, name: str, replicas: int | None = None, **extra: Any) -> str:
    spec: dict[str, Any] = {
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": SLEEPER, "StopGracePeriod": 3_000_000_000},
                         "RestartPolicy": {"Condition": "any", "Delay": 500_000_000}},
        "Mode": {"Global": {}} if replicas is None else {"Replicated": {"Replicas": replicas}},
        "UpdateConfig": {"Parallelism": 2, "Monitor": 1_000_000_000, "FailureAction": "rollback"},
        "RollbackConfig": {"Parallelism": 2, "Monitor": 1_000_000_000},
    }
    spec.update(extra)
    return str(api(lab, MANAGER, "POST", "/services/create", spec)["ID"])




def hosts_of(lab: Lab, tasks: list[dict[str, Any]]) -> list[str]:
    names = {n["ID"]: n["Description"]["Hostname"] for n in api(lab, MANAGER, "GET", "/nodes")}
    return sorted(names.get(t["NodeID"], "?") for t in tasks)




def update_service(lab: Lab, service: str, change: Any, **params: Any) -> None:
    current = api(lab, MANAGER, "GET", f"/services/{service}")
    spec = current["Spec"]
    change(spec)
    api(lab, MANAGER, "POST", f"/services/{current['ID']}/update", spec, version=current["Version"]["Index"],
        **params)


def remove(lab: Lab, service: str) -> None:
    service_id = api(lab, MANAGER, "GET", f"/services/{service}")["ID"]
    api(lab, MANAGER, "DELETE", f"/services/{service}")

    def stopped() -> bool:
        tasks = [t for t in api(lab, MANAGER, "GET", "/tasks") if t["ServiceID"] == service_id]
        return all(t["Status"]["State"] not in ("running", "starting") for t in tasks)

    eventually(stopped, what=f"{service}'s tasks to stop")


def test_create_spreads_and_scale_up_and_down(lab: Lab) -> None:
    create(lab, "web", replicas=4)
    tasks = converged(lab, "web", 4)
    assert len(set(hosts_of(lab, tasks))) == 3, "4 tasks on 3 nodes are spread over all of them"
    status = api(lab, MANAGER, "GET", "/services", status="true")[0]["ServiceStatus"]
    assert status == {"RunningTasks": 4, "DesiredTasks": 4, "CompletedTasks": 0}
    update_service(lab, "web", lambda s: s["Mode"]["Replicated"].__setitem__("Replicas", 7))
    converged(lab, "web", 7)
    update_service(lab, "web", lambda s: s["Mode"]["Replicated"].__setitem__("Replicas", 2))
    tasks = converged(lab, "web", 2)
    assert sorted(t["Slot"] for t in tasks) == [1, 2], "scaling down removes the highest slots"
    remove(lab, "web")


def test_failed_update_rolls_back(lab: Lab) -> None:
    create(lab, "roll", replicas=2)
    before = {t["ID"] for t in converged(lab, "roll", 2)}
    update_service(lab, "roll", lambda s: s["TaskTemplate"]["ContainerSpec"].__setitem__("Image", MISSING_IMAGE))
    service = eventually(lambda: (lambda s: s if (s.get("UpdateStatus") or {}).get("State") == "rollback_completed"
                                  else None)(api(lab, MANAGER, "GET", "/services/roll")),
                         timeout=60, what="the update to roll back")
    assert service is not None
    assert service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == IMAGE
    tasks = converged(lab, "roll", 2)
    assert all(t["Spec"]["ContainerSpec"]["Image"] == IMAGE for t in tasks)
    rejected = [t for t in api(lab, MANAGER, "GET", "/tasks", filters={"service": ["roll"]})
                if t["Status"]["State"] == "rejected"]
    errors = [t["Status"].get("Err", "") for t in rejected]
    assert any("nope:missing" in e for e in errors), errors
    assert before, "the service ran before the update"
    remove(lab, "roll")


def test_global_service_follows_drain_and_activate(lab: Lab) -> None:
    create(lab, "agent")
    converged(lab, "agent", 3)
    node_update(lab, MANAGER, "worker-1", lambda spec: spec.__setitem__("Availability", "drain"))
    tasks = converged(lab, "agent", 2)
    assert "worker-1" not in hosts_of(lab, tasks)
    node_update(lab, MANAGER, "worker-1", lambda spec: spec.__setitem__("Availability", "active"))
    converged(lab, "agent", 3)
    remove(lab, "agent")


def test_drain_moves_replicated_tasks(lab: Lab) -> None:
    create(lab, "mover", replicas=3)
    converged(lab, "mover", 3)
    node_update(lab, MANAGER, "worker-2", lambda spec: spec.__setitem__("Availability", "drain"))
    try:
        tasks = eventually(lambda: (lambda r: r if len(r) == 3 and "worker-2" not in hosts_of(lab, r) else [])(
            running(lab, "mover")), timeout=40, what="tasks moved off the drained node")
        assert "worker-2" not in hosts_of(lab, tasks)
    finally:
        node_update(lab, MANAGER, "worker-2", lambda spec: spec.__setitem__("Availability", "active"))
    remove(lab, "mover")


def test_crashed_and_partitioned_worker_tasks_run_elsewhere(lab: Lab) -> None:
    create(lab, "survivor", replicas=3)
    tasks = converged(lab, "survivor", 3)
    victim = "worker-2"
    assert victim in hosts_of(lab, tasks)
    started = time.monotonic()
    lab.kill(victim)
    for other in ("manager-1", "worker-1"):
        lab.partition(victim, other)
    try:
        tasks = eventually(lambda: (lambda r: r if len(r) == 3 and victim not in hosts_of(lab, r) else [])(
            running(lab, "survivor")), timeout=40, what="tasks running elsewhere")
        elapsed = time.monotonic() - started
        print(json.dumps({"failure_detection_seconds": round(elapsed, 2)}))
        assert victim not in hosts_of(lab, tasks)
    finally:
        lab.heal()
        lab.start(victim)
    eventually(lambda: {n["Description"]["Hostname"]: n["Status"]["State"]
                        for n in api(lab, MANAGER, "GET", "/nodes")}[victim] == "ready",
               what="the restarted worker to be ready")
    remove(lab, "survivor")


def test_a_dead_host_is_detected_without_waiting_for_heartbeats(lab: Lab) -> None:
    """The host drops off the network before its daemon dies (so nothing of it, not even a FIN,
    arrives). With heartbeats every 60 s (3 minutes of grace) its tasks still move within the
    wait below: the manager's keepalive probes go unanswered and the node is cut at once."""
    create(lab, "lifeline", replicas=3)
    converged(lab, "lifeline", 3)
    victim = "worker-2"
    set_heartbeat(lab, MANAGER, 60)
    try:
        for other in ("manager-1", "worker-1"):
            lab.partition(victim, other)
        lab.kill(victim)
        eventually(lambda: (lambda r: len(r) == 3 and victim not in hosts_of(lab, r))(running(lab, "lifeline")),
                   timeout=30, what="tasks of the unreachable host running elsewhere")
        states = {n["Description"]["Hostname"]: n["Status"]["State"] for n in api(lab, MANAGER, "GET", "/nodes")}
        assert states[victim] == "down"
    finally:
        lab.heal()
        set_heartbeat(lab, MANAGER, 1)
        lab.start(victim)
    eventually(lambda: {n["Description"]["Hostname"]: n["Status"]["State"]
                        for n in api(lab, MANAGER, "GET", "/nodes")}[victim] == "ready",
               what="the restarted worker to be ready")
    remove(lab, "lifeline")


def test_busy_hosts_are_not_marked_down(lab: Lab) -> None:
    """Saturate the CPUs of every host for several grace periods (heartbeats every 1 s here, so
    3 s of grace): no node may be marked down, and no task may be moved."""
    import subprocess

    create(lab, "steady", replicas=3)
    before = {t["ID"] for t in converged(lab, "steady", 3)}
    burners = [subprocess.Popen(lab.exec_argv(node, ["timeout", "9", "sh", "-c", "while :; do :; done"]))
               for node in lab.nodes for _ in range(2)]
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            states = {n["Description"]["Hostname"]: n["Status"]["State"] for n in api(lab, MANAGER, "GET", "/nodes")}
            assert set(states.values()) == {"ready"}, states
            time.sleep(0.5)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert {t["ID"] for t in running(lab, "steady")} == before, "no task was replaced"
    remove(lab, "steady")


def test_daemon_sigkill_and_restart_keeps_containers_running(lab: Lab) -> None:
    """Live restore: a worker daemon killed with SIGKILL and restarted re-adopts its containers;
    nothing is restarted or rescheduled."""
    create(lab, "kept", replicas=3)
    tasks = converged(lab, "kept", 3)
    on_worker = {t["ID"]: t["Status"]["ContainerStatus"]["PID"] for t in tasks
                 if hosts_of(lab, [t]) == ["worker-1"]}
    assert on_worker, "a task runs on worker-1"
    lab.kill("worker-1")
    for pid in on_worker.values():
        assert os.path.exists(f"/proc/{pid}"), "containers outlive their daemon"
    lab.start("worker-1")
    eventually(lambda: {n["Description"]["Hostname"]: n["Status"]["State"]
                        for n in api(lab, MANAGER, "GET", "/nodes")}["worker-1"] == "ready",
               what="the restarted worker to be ready")
    after = {t["ID"]: t for t in running(lab, "kept")}
    assert set(on_worker) <= set(after), "the same tasks still run"
    assert {tid: after[tid]["Status"]["ContainerStatus"]["PID"] for tid in on_worker} == on_worker
    assert len(after) == 3
    remove(lab, "kept")


def test_unplaceable_tasks_say_why_and_run_once_a_node_fits(lab: Lab) -> None:
    """Never stuck pending: a task no node fits stays PENDING with the reason, and runs as soon as
    a node fits (here: when the label it needs appears)."""
    create(lab, "picky", replicas=2,
           TaskTemplate={"ContainerSpec": {"Image": IMAGE, "Args": SLEEPER},
                         "Placement": {"Constraints": ["node.labels.tier==gold"]}})

    def pending_reason() -> str:
        tasks = api(lab, MANAGER, "GET", "/tasks", filters={"service": ["picky"]})
        errs = {t["Status"].get("Err", "") for t in tasks if t["Status"]["State"] == "pending"}
        return next(iter(errs), "") if len(tasks) == 2 and len(errs) == 1 else ""

    reason = eventually(pending_reason, what="pending tasks with a reason")
    assert reason == "no suitable node (3 nodes not matching placement constraints)", reason
    node_update(lab, MANAGER, "worker-1", lambda spec: spec["Labels"].__setitem__("tier", "gold"))
    try:
        tasks = converged(lab, "picky", 2)
        assert hosts_of(lab, tasks) == ["worker-1", "worker-1"]
    finally:
        node_update(lab, MANAGER, "worker-1", lambda spec: spec["Labels"].pop("tier"))
    remove(lab, "picky")
