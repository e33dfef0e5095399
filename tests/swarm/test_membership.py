"""Swarm membership on the lab: real daemons in network namespaces, mutual TLS, Raft.

One 3-manager, 2-worker swarm serves the whole module; each test leaves it whole again.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

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
        def write_label(spec: dict[str, Any], m: str = m) -> None:
            spec["Labels"]["written-by"] = m
        node_update(swarm, m, "worker-2", write_label)
    eventually(lambda: nodes_by_host(swarm, survivors[0])["worker-2"]["Spec"]["Labels"]["written-by"] == survivors[1],
               what="the second write visible on the first survivor")
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
    worker = nodes_by_host(swarm, lonely)["worker-1"]
    for m in others:
        swarm.partition(lonely, m)
    try:
        # The minority refuses writes and reads with a clear error, within seconds, never a hang
        # and never stale state.
        err = api_error(swarm, lonely, "POST", f"/nodes/{worker['ID']}/update", worker["Spec"],
                        version=worker["Version"]["Index"])
        assert err.status == 503
        assert "quorum" in err.message or "does not have a leader" in err.message
        err = api_error(swarm, lonely, "GET", "/nodes")
        assert err.status == 503 and "does not have a leader" in err.message
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


def managers_in_raft(lab: Lab, via: str) -> set[str]:
    return {h for h, n in nodes_by_host(lab, via).items() if n.get("ManagerStatus")}


def test_availability_and_labels(swarm: Lab) -> None:
    for availability in ("drain", "pause", "active"):
        def set_availability(spec: dict[str, Any], a: str = availability) -> None:
            spec["Availability"] = a
        node_update(swarm, "manager-2", "worker-1", set_availability)
        # The writer reads its own write at once; other managers follow within a moment.
        assert nodes_by_host(swarm, "manager-2")["worker-1"]["Spec"]["Availability"] == availability

        def on_manager_3(a: str = availability) -> bool:
            return nodes_by_host(swarm, "manager-3")["worker-1"]["Spec"]["Availability"] == a
        eventually(on_manager_3, what=f"availability {availability} on manager-3")
    node_update(swarm, "manager-1", "worker-1", lambda spec: spec["Labels"].__setitem__("zone", "a"))
    eventually(lambda: nodes_by_host(swarm, "manager-2")["worker-1"]["Spec"]["Labels"].get("zone") == "a",
               what="label on manager-2")
    filtered = api(swarm, "manager-1", "GET", "/nodes", filters={"node.label": ["zone=a"]})
    assert [n["Description"]["Hostname"] for n in filtered] == ["worker-1"]
    node_update(swarm, "manager-1", "worker-1", lambda spec: spec["Labels"].pop("zone"))
    eventually(lambda: "zone" not in nodes_by_host(swarm, "manager-2")["worker-1"]["Spec"]["Labels"],
               what="label removal on manager-2")


def test_promote_and_demote_move_raft_membership(swarm: Lab) -> None:
    node_update(swarm, "manager-1", "worker-2", lambda spec: spec.__setitem__("Role", "manager"))
    eventually(lambda: "worker-2" in managers_in_raft(swarm, "manager-1"), timeout=30, what="worker-2 in raft")
    eventually(lambda: api(swarm, "worker-2", "GET", "/info")["Swarm"]["ControlAvailable"], timeout=30,
               what="worker-2 serving as a manager")
    assert len(api(swarm, "worker-2", "GET", "/nodes")) == 5  # it has the replicated state
    node_update(swarm, "manager-1", "worker-2", lambda spec: spec.__setitem__("Role", "worker"))
    eventually(lambda: "worker-2" not in managers_in_raft(swarm, "manager-1"), timeout=30, what="worker-2 out")
    eventually(lambda: api_error(swarm, "worker-2", "GET", "/nodes").status == 503, timeout=30,
               what="worker-2 back to a worker")
    eventually(lambda: agreed_view(swarm), what="agreement after promote and demote")


def test_demoting_the_last_manager_and_removing_a_manager_are_refused(swarm: Lab) -> None:
    err = api_error(swarm, "manager-1", "DELETE", "/nodes/manager-2")
    assert err.status == 400 and "must be demoted to worker before removal" in err.message
    err = api_error(swarm, "manager-1", "DELETE", "/nodes/worker-1")
    assert err.status == 400 and "is not down and can't be removed" in err.message


def test_worker_leave_then_rm_then_rejoin(swarm: Lab) -> None:
    api(swarm, "worker-1", "POST", "/swarm/leave")
    assert api(swarm, "worker-1", "GET", "/info")["Swarm"]["LocalNodeState"] == "inactive"
    eventually(lambda: nodes_by_host(swarm, "manager-1")["worker-1"]["Status"]["State"] == "down",
               what="the departed worker to be down")
    api(swarm, "manager-1", "DELETE", "/nodes/worker-1")
    eventually(lambda: "worker-1" not in nodes_by_host(swarm, "manager-2"), what="removal on manager-2")
    token = api(swarm, "manager-1", "GET", "/swarm")["JoinTokens"]["Worker"]
    api(swarm, "worker-1", "POST", "/swarm/join", {"RemoteAddrs": [f"{swarm.node('manager-2').address}:2377"],
                                                   "JoinToken": token, "AdvertiseAddr": swarm.node("worker-1").address})
    eventually(lambda: nodes_by_host(swarm, "manager-1")["worker-1"]["Status"]["State"] == "ready",
               what="the worker to rejoin")


def test_manager_leave_refused_without_force_when_last_and_join_errors(swarm: Lab) -> None:
    err = api_error(swarm, "manager-1", "POST", "/swarm/init", {})
    assert err.status == 503 and "already part of a swarm" in err.message
    err = api_error(swarm, "worker-2", "POST", "/swarm/join",
                    {"RemoteAddrs": ["198.18.0.11:2377"], "JoinToken": "SWMTKN-1-bad"})
    assert err.status == 503 and "already part of a swarm" in err.message


def test_wrong_and_rotated_tokens_and_bad_certificates_are_refused(swarm: Lab, tmp_path) -> None:
    cluster = api(swarm, "manager-1", "GET", "/swarm")
    old_token = cluster["JoinTokens"]["Worker"]
    api(swarm, "manager-1", "POST", "/swarm/update", cluster["Spec"], version=cluster["Version"]["Index"],
        rotateWorkerToken="true")
    new_cluster = api(swarm, "manager-1", "GET", "/swarm")
    assert new_cluster["JoinTokens"]["Worker"] != old_token
    assert new_cluster["JoinTokens"]["Manager"] == cluster["JoinTokens"]["Manager"]
    # A spare daemon outside the swarm: worker-2 leaves, then tries tokens.
    api(swarm, "worker-2", "POST", "/swarm/leave")
    remote = [f"{swarm.node('manager-1').address}:2377"]
    err = api_error(swarm, "worker-2", "POST", "/swarm/join", {"RemoteAddrs": remote, "JoinToken": old_token})
    assert err.status == 400 and "A valid join token is necessary" in err.message
    digest = old_token.split("-")[2]
    forged = f"SWMTKN-1-{digest}-{'a' * 25}"
    err = api_error(swarm, "worker-2", "POST", "/swarm/join", {"RemoteAddrs": remote, "JoinToken": forged})
    assert err.status == 400 and "A valid join token is necessary" in err.message
    wrong_ca = "SWMTKN-1-" + "0" * 50 + "-" + "a" * 25
    err = api_error(swarm, "worker-2", "POST", "/swarm/join", {"RemoteAddrs": remote, "JoinToken": wrong_ca})
    assert err.status == 400 and "does not match the fingerprint" in err.message
    err = api_error(swarm, "worker-2", "POST", "/swarm/join", {"RemoteAddrs": ["198.18.0.99:2377"],
                                                               "JoinToken": new_cluster["JoinTokens"]["Worker"]})
    assert err.status == 503 and "no manager could be reached" in err.message
    api(swarm, "worker-2", "POST", "/swarm/join", {"RemoteAddrs": remote,
                                                   "JoinToken": new_cluster["JoinTokens"]["Worker"],
                                                   "AdvertiseAddr": swarm.node("worker-2").address})

    # A certificate from another CA is refused at the handshake; a worker certificate cannot
    # call manager-only methods. The probe runs inside a lab host: lab addresses exist only there.
    probe = swarm.exec("worker-1", [sys.executable, "-m", "tests.swarm.cert_probe", remote[0],
                                    swarm.node("worker-1").data_dir + "/swarm/certificates", str(tmp_path)],
                       check=True)
    outcome = json.loads(probe.stdout.strip().splitlines()[-1])
    assert outcome["foreign"].startswith("unavailable"), outcome
    assert outcome["worker"].startswith("permission_denied"), outcome


def test_manager_leave_shrinks_raft_and_rejoins(swarm: Lab) -> None:
    eventually(lambda: agreed_view(swarm), what="agreement")
    eventually(lambda: managers_in_raft(swarm, "manager-1") == set(MANAGERS), what="three managers in raft")
    # With manager-2 down, manager-3 leaving would leave 1 reachable manager out of 2: refused.
    swarm.kill("manager-2")
    try:
        eventually(lambda: nodes_by_host(swarm, "manager-3")["manager-2"]["ManagerStatus"]["Reachability"]
                   == "unreachable", what="manager-2 to be unreachable")
        err = api_error(swarm, "manager-3", "POST", "/swarm/leave")
        assert err.status == 503 and "Without a Raft quorum" in err.message
    finally:
        swarm.start("manager-2")
    eventually(lambda: nodes_by_host(swarm, "manager-3")["manager-2"]["ManagerStatus"]["Reachability"]
               == "reachable", what="manager-2 to be reachable again")
    api(swarm, "manager-3", "POST", "/swarm/leave")
    assert api(swarm, "manager-3", "GET", "/info")["Swarm"]["LocalNodeState"] == "inactive"
    eventually(lambda: managers_in_raft(swarm, "manager-1") == {"manager-1", "manager-2"},
               what="raft membership to drop the departed manager")
    node_update(swarm, "manager-1", "worker-1", lambda spec: spec["Labels"].__setitem__("after-leave", "ok"))
    stale = nodes_by_host(swarm, "manager-1")["manager-3"]
    assert stale["Spec"]["Role"] == "worker" and not stale.get("ManagerStatus")
    eventually(lambda: nodes_by_host(swarm, "manager-1")["manager-3"]["Status"]["State"] == "down",
               what="the departed manager to be down")
    api(swarm, "manager-1", "DELETE", f"/nodes/{stale['ID']}")
    token = api(swarm, "manager-1", "GET", "/swarm")["JoinTokens"]["Manager"]
    api(swarm, "manager-3", "POST", "/swarm/join", {"RemoteAddrs": [f"{swarm.node('manager-1').address}:2377"],
                                                    "JoinToken": token,
                                                    "AdvertiseAddr": swarm.node("manager-3").address})
    eventually(lambda: managers_in_raft(swarm, "manager-1") == set(MANAGERS), timeout=30,
               what="the manager to rejoin raft")
    eventually(lambda: agreed_view(swarm), what="agreement after rejoin")
