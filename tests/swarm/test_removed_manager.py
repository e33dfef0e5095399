"""A manager taken out of Raft while it was down or cut off learns it is out (issue 17).

Three managers on the lab. One of them (not the leader) is demoted while it cannot hear the leader:
first while its daemon is down, then while it runs behind a partition. It stays cut off from the
leader but can reach the third manager, so its agent cannot reach the dispatcher (a follower sends
it to the unreachable leader) and only Raft can tell it: the third manager answers its pre-votes
with REMOVED. It must then say it is out (/info's Error and Swarm.Raft, its log, the worker text for
cluster calls) and the other two must see no election from it: their term and leader stay put.
Once the partition heals, the dispatcher tells it that it is a worker, and it becomes one; or, if
the swarm wants it as a manager again, it joins Raft as a new member. A manager demoted while down
and then deleted (`node rm --force`) hears from no dispatcher: it says it is out, for good.

The second test: managers left out of a cluster forced anew (`swarm init --force-new-cluster`)
come back together and must not take it over (raft/node.py, "Refused members").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.lab import Lab
from tests.swarm.helpers import api, api_error, eventually, leader_host, node_update, nodes_by_host

MANAGERS = ("manager-1", "manager-2", "manager-3")
REMOVED_LOG = "this manager was removed from the raft cluster"
QUIET_SECONDS = 4.0     # several election timeouts (0.5-1 s each) of the managers' Raft


def raft_info(lab: Lab, host: str) -> dict[str, Any]:
    return api(lab, host, "GET", "/info")["Swarm"]["Raft"]


def removed_lines(lab: Lab, host: str) -> int:
    return sum(REMOVED_LOG in line for line in Path(lab.node(host).log).read_text(errors="replace").splitlines())


def demoted_lines(lab: Lab, host: str) -> int:
    """Log lines of the node's role change to worker."""
    return sum('"msg": "role change"' in line and '"to": "worker"' in line
               for line in Path(lab.node(host).log).read_text(errors="replace").splitlines())


def holds_for(check: Callable[[], Any], seconds: float, what: str) -> None:
    """Check an invariant over a period: it must hold at every look (an absence of events, e.g. no
    election, can only be watched for a while)."""
    deadline = time.monotonic() + seconds
    while True:
        assert check(), f"{what} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(0.2)


def terms(lab: Lab, hosts: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(term, leader raft ID) as each of `hosts` sees it."""
    infos = {h: raft_info(lab, h) for h in hosts}
    return {h: (info["Term"], info["Leader"]) for h, info in infos.items()}


def agreed_terms(lab: Lab, hosts: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """`terms` once `hosts` agree on them (else {})."""
    seen = terms(lab, hosts)
    return seen if len(set(seen.values())) == 1 else {}


def in_raft(lab: Lab, via: str) -> set[str]:
    return {h for h, n in nodes_by_host(lab, via).items() if n.get("ManagerStatus")}


def demote(lab: Lab, leader: str, victim: str) -> None:
    node_update(lab, leader, victim, lambda spec: spec.__setitem__("Role", "worker"))
    eventually(lambda: victim not in in_raft(lab, leader), timeout=30, what=f"{victim} out of raft")


def says_it_is_out(lab: Lab, victim: str, before: int) -> None:
    """The removed manager's /info, API and log say it is out."""
    def removed_info() -> dict[str, Any]:
        swarm = api(lab, victim, "GET", "/info")["Swarm"]
        return swarm if swarm.get("Raft", {}).get("Removed") else {}

    info = eventually(removed_info, timeout=30, what=f"{victim} to know it was removed")
    assert info["ControlAvailable"] is False
    assert REMOVED_LOG in info["Error"]
    err = api_error(lab, victim, "GET", "/nodes")
    assert err.status == 503 and "Worker nodes can't be used" in err.message
    eventually(lambda: removed_lines(lab, victim) == before + 1, what=f"{victim}'s log to say it was removed")


def becomes_a_worker(lab: Lab, leader: str, victim: str) -> None:
    eventually(lambda: (lambda s: s["LocalNodeState"] == "active" and not s["ControlAvailable"]
                        and "Raft" not in s and not s["Error"])(api(lab, victim, "GET", "/info")["Swarm"]),
               timeout=60, what=f"{victim} to become a worker")
    eventually(lambda: (lambda n: n["Spec"]["Role"] == "worker" and n["Status"]["State"] == "ready"
                        and not n.get("ManagerStatus"))(nodes_by_host(lab, leader)[victim]),
               timeout=30, what=f"{victim} ready as a worker")


def test_manager_demoted_while_down_or_partitioned_says_it_is_out_and_never_campaigns(make_lab) -> None:
    lab: Lab = make_lab(managers=3, workers=0, swarm=True)
    eventually(lambda: all(n["Status"]["State"] == "ready" for n in nodes_by_host(lab, "manager-1").values()),
               timeout=30, what="all managers ready")
    leader = eventually(lambda: leader_host(lab, "manager-1"), what="a leader")
    victim, third = [m for m in MANAGERS if m != leader]
    remaining = (leader, third)

    # 1. Demoted while its daemon is down; it comes back cut off from the leader.
    lab.stop(victim)
    demote(lab, leader, victim)
    before = eventually(lambda: agreed_terms(lab, remaining), what="the two managers to agree on term and leader")
    lab.partition(victim, leader)
    lab.start(victim)
    says_it_is_out(lab, victim, before=0)
    holds_for(lambda: terms(lab, remaining) == before, QUIET_SECONDS, "the managers' term and leader")
    assert raft_info(lab, victim)["Removed"] is True, "it stays out"
    lab.heal()
    becomes_a_worker(lab, leader, victim)
    assert terms(lab, remaining) == before, "no election while it became a worker"

    # 2. Promoted again, then demoted while it runs behind a partition from the leader.
    node_update(lab, leader, victim, lambda spec: spec.__setitem__("Role", "manager"))
    eventually(lambda: victim in in_raft(lab, leader), timeout=60, what=f"{victim} in raft again")
    eventually(lambda: api(lab, victim, "GET", "/info")["Swarm"]["ControlAvailable"], timeout=30,
               what=f"{victim} serving as a manager again")
    before = eventually(lambda: agreed_terms(lab, MANAGERS), what="the three managers to agree on term and leader")
    lab.partition(victim, leader)
    demote(lab, leader, victim)
    remaining_before = {h: before[h] for h in remaining}
    says_it_is_out(lab, victim, before=1)
    holds_for(lambda: terms(lab, remaining) == remaining_before, QUIET_SECONDS, "the managers' term and leader")
    lab.heal()
    becomes_a_worker(lab, leader, victim)
    assert terms(lab, remaining) == remaining_before, "no election while it became a worker"

    # 3. Promoted, then demoted and promoted again while down: it comes back out of Raft (it learns so
    # from the third manager, cut off from the leader), and once it hears that the swarm wants it as a
    # manager it joins as a new Raft member, as a promotion does.
    node_update(lab, leader, victim, lambda spec: spec.__setitem__("Role", "manager"))
    eventually(lambda: victim in in_raft(lab, leader), timeout=60, what=f"{victim} in raft again")
    eventually(lambda: api(lab, victim, "GET", "/info")["Swarm"]["ControlAvailable"], timeout=30,
               what=f"{victim} serving as a manager again")
    old_id = raft_info(lab, victim)["RaftID"]
    lab.stop(victim)
    demote(lab, leader, victim)
    node_update(lab, leader, victim, lambda spec: spec.__setitem__("Role", "manager"))
    lab.partition(victim, leader)
    lab.start(victim)
    says_it_is_out(lab, victim, before=2)     # (its log file goes on across restarts)
    lab.heal()

    def back_in_raft() -> bool:
        info = api(lab, victim, "GET", "/info")["Swarm"]
        return bool(info["ControlAvailable"] and not info["Raft"]["Removed"] and info["Raft"]["RaftID"] != old_id
                    and victim in in_raft(lab, leader))

    eventually(back_in_raft, timeout=60, what=f"{victim} in raft as a new member")
    assert terms(lab, remaining) == remaining_before, "no election while it came back"

    # 4. Demoted while down and then removed from the swarm (`node rm --force`): no dispatcher will
    # ever tell it anything, so what it knows comes from Raft alone. It says it is out, for good.
    lab.stop(victim)
    demote(lab, leader, victim)
    api(lab, leader, "DELETE", f"/nodes/{victim}", force="true")
    eventually(lambda: victim not in nodes_by_host(lab, leader), what=f"{victim} removed from the swarm")
    lab.start(victim)
    says_it_is_out(lab, victim, before=3)
    holds_for(lambda: terms(lab, remaining) == remaining_before, QUIET_SECONDS, "the managers' term and leader")
    assert raft_info(lab, victim)["Removed"] is True


def ghost_leader(lab: Lab, hosts: tuple[str, ...]) -> str:
    """The host among `hosts` that leads (their old configuration), or ""."""
    for host in hosts:
        info = raft_info(lab, host)
        if info["Leader"] == info["RaftID"]:
            return host
    return ""


def test_managers_left_out_of_a_forced_new_cluster_come_back_and_never_take_it_over(make_lab) -> None:
    """Two managers are lost and the third forces a new cluster. The two come back together, cut off
    from it: with their old logs they are a majority of the old configuration and elect a leader of
    it, and their agents stay with that leader's dispatcher. When the partition heals, that leader's
    heartbeats reach the new cluster, whose log cannot be compared with theirs (it starts anew, at
    the same small terms): the new cluster must refuse them rather than follow, and they learn that
    they are out (raft/node.py, "Refused members"; or from the new cluster's dispatcher, when their
    agents reach it first). Then they become workers."""
    lab: Lab = make_lab(managers=3, workers=0, swarm=True)
    eventually(lambda: all(n["Status"]["State"] == "ready" for n in nodes_by_host(lab, "manager-1").values()),
               timeout=30, what="all managers ready")
    survivor, lost = "manager-1", ("manager-2", "manager-3")
    for host in lost:
        lab.kill(host)
    api(lab, survivor, "POST", "/swarm/init", {"ForceNewCluster": True})
    node_update(lab, survivor, survivor, lambda spec: spec["Labels"].__setitem__("forced", "yes"))
    before = terms(lab, (survivor,))
    for host in lost:
        lab.partition(host, survivor)
        lab.start(host)
    ghost = eventually(lambda: ghost_leader(lab, lost), timeout=30, what="the old managers to elect a leader")
    assert terms(lab, (survivor,)) == before
    lab.heal()
    # It learns that it is out from whichever reaches it first: the new cluster's refusal of its
    # Raft messages, or the new cluster's dispatcher, which its agent may reach first and which
    # makes it a worker (its Raft lanes are then refused as a worker's).
    eventually(lambda: removed_lines(lab, ghost) >= 1 or demoted_lines(lab, ghost) >= 1, timeout=30,
               what=f"{ghost}'s log to say it was removed or demoted")
    for host in lost:
        becomes_a_worker(lab, survivor, host)
        assert terms(lab, (survivor,)) == before, f"{host} disturbed the new cluster"
    holds_for(lambda: terms(lab, (survivor,)) == before, QUIET_SECONDS, "the new cluster's term and leader")
    assert nodes_by_host(lab, survivor)[survivor]["Spec"]["Labels"]["forced"] == "yes"
    assert in_raft(lab, survivor) == {survivor}

