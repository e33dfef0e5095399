"""Swarm membership on the lab: real daemons in network namespaces, mutual TLS, Raft.

One 3-manager, 2-worker swarm serves the whole module; each test leaves it whole again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cli.lab import Lab
from tests.conftest import needs_root
from tests.swarm.helpers import api, api_error, eventually, leader_host, node_update, nodes_by_host, set_heartbeat

MANAGERS = ("manager-1", "manager-2", "manager-3")


@pytest.fixture(scope="module")
def swarm() -> Iterator[Lab]:
    needs_root()
    lab = Lab(f"m{os.getpid() % 100000:05d}")
    lab.down()
    try:
        lab.up(managers=3, workers=2, swarm=True)
        set_heartbeat(lab, "manager-1", 1.0)  # node failures are noticed in about 3 s
        yield lab
    finally:
        lab.down()


def agreed_view(lab: Lab, managers: tuple[str, ...] = MANAGERS) -> dict[str, tuple[str, str, str]]:
    views = []
    for m in managers:
        views.append({h: (n["ID"], n["Spec"]["Role"], n["Status"]["State"]) for h, n in nodes_by_host(lab, m).items()})
    assert all(v == views[0] for v in views), views
    return views[0]


def test_swarm_formed_and_every_manager_agrees(swarm: Lab) -> None:
    view = eventually(lambda: agreed_view(swarm), what="all managers to agree")
    assert sorted(view) == ["manager-1", "manager-2", "manager-3", "worker-1", "worker-2"]
    assert [h for h, (_, role, _) in view.items() if role == "manager"] == list(MANAGERS)
    eventually(lambda: all(state == "ready" for _, _, state in agreed_view(swarm).values()), what="all ready")
    info = api(swarm, "manager-2", "GET", "/info")["Swarm"]
    assert info["LocalNodeState"] == "active" and info["ControlAvailable"] is True
    assert info["Managers"] == 3 and info["Nodes"] == 5
    worker_info = api(swarm, "worker-1", "GET", "/info")["Swarm"]
    assert worker_info["ControlAvailable"] is False


def test_worker_refuses_manager_calls(swarm: Lab) -> None:
    err = api_error(swarm, "worker-1", "GET", "/nodes")
    assert err.status == 503
    assert "Worker nodes can't be used to view or modify cluster state" in err.message


def test_leader_killed_new_leader_serves_and_old_one_returns(swarm: Lab) -> None:
    old = eventually(lambda: leader_host(swarm, "manager-1"), what="a leader")
    survivors = [m for m in MANAGERS if m != old]
    swarm.kill(old)
    new = eventually(lambda: (lambda h: h if h and h != old else "")(leader_host(swarm, survivors[0])),
                     timeout=10, what="a new leader")
    assert new in survivors
    # Writes work from every remaining manager (followers forward them to the leader).
    for m in survivors:
        node_update(swarm, m, "worker-2", lambda spec, m=m: spec["Labels"].__setitem__("written-by", m))
    assert nodes_by_host(swarm, survivors[0])["worker-2"]["Spec"]["Labels"]["written-by"] == survivors[1]
    eventually(lambda: nodes_by_host(swarm, survivors[0])[old]["ManagerStatus"]["Reachability"] == "unreachable",
               what="the dead manager to show unreachable")
    eventually(lambda: nodes_by_host(swarm, survivors[1])[old]["Status"]["State"] == "down",
               what="the dead manager to show down")
    swarm.start(old)
    eventually(lambda: (lambda n: n["ManagerStatus"]["Reachability"] == "reachable"
                        and n["Status"]["State"] == "ready")(nodes_by_host(swarm, new)[old]),
               what="the restarted manager to be reachable and ready again")
    eventually(lambda: agreed_view(swarm), what="agreement after the restart")


def test_minority_manager_refuses_writes_and_heals(swarm: Lab) -> None:
    eventually(lambda: agreed_view(swarm), what="agreement")
    lonely = "manager-3"
    others = [m for m in MANAGERS if m != lonely]
    for m in others:
        swarm.partition(lonely, m)
    try:
        err = api_error(swarm, lonely, "POST", "/nodes/worker-1/update",
                        nodes_by_host(swarm, lonely)["worker-1"]["Spec"],
                        version=nodes_by_host(swarm, lonely)["worker-1"]["Version"]["Index"])
        assert err.status == 503
        assert "does not have a leader" in err.message
        eventually(lambda: leader_host(swarm, others[0]) in others, what="a leader on the majority side")
        node_update(swarm, others[0], "worker-1", lambda spec: spec["Labels"].__setitem__("side", "majority"))
    finally:
        swarm.heal()
    eventually(lambda: nodes_by_host(swarm, lonely)["worker-1"]["Spec"]["Labels"].get("side") == "majority",
               what="the healed manager to catch up")
    eventually(lambda: agreed_view(swarm), what="agreement after heal")


def test_worker_fails_over_to_another_manager(swarm: Lab) -> None:
    leader = eventually(lambda: leader_host(swarm, "manager-1"), what="a leader")
    survivors = [m for m in MANAGERS if m != leader]
    swarm.kill(leader)
    try:
        # The workers' sessions were with the dead leader; they must reconnect and stay ready
        # longer than the heartbeat grace (3 s at a 1 s period).
        eventually(lambda: leader_host(swarm, survivors[0]) in survivors, timeout=10, what="a new leader")
        eventually(lambda: all(nodes_by_host(swarm, survivors[0])[w]["Status"]["State"] == "ready"
                               for w in ("worker-1", "worker-2")), what="workers ready with the new leader")
        import time

        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # the workers must stay ready through a full grace period
            states = {w: nodes_by_host(swarm, survivors[0])[w]["Status"]["State"] for w in ("worker-1", "worker-2")}
            assert states == {"worker-1": "ready", "worker-2": "ready"}, states
            time.sleep(0.5)
    finally:
        swarm.start(leader)
    eventually(lambda: agreed_view(swarm), what="agreement after restart")
