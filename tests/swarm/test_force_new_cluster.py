"""A manager that lost quorum recovers with `swarm init --force-new-cluster`, keeping its state."""

from __future__ import annotations

from cli.lab import Lab
from tests.swarm.helpers import api, api_error, eventually, node_update, nodes_by_host


def test_force_new_cluster_keeps_state_and_restores_writes(make_lab) -> None:
    lab: Lab = make_lab(managers=3, workers=1, swarm=True)
    eventually(lambda: len([n for n in nodes_by_host(lab, "manager-1").values() if n["Status"]["State"] == "ready"])
               == 4, what="all nodes ready")
    node_update(lab, "manager-1", "worker-1", lambda spec: spec["Labels"].__setitem__("kept", "yes"))
    secret = api(lab, "manager-1", "POST", "/secrets/create", {"Name": "kept-secret", "Data": "c2VjcmV0"})
    lab.kill("manager-2")
    lab.kill("manager-3")
    err = api_error(lab, "manager-1", "GET", "/nodes")
    assert err.status == 503, "without quorum the survivor refuses to serve"

    node_id = api(lab, "manager-1", "POST", "/swarm/init", {"ForceNewCluster": True})
    assert node_id == api(lab, "manager-1", "GET", "/info")["Swarm"]["NodeID"]
    nodes = nodes_by_host(lab, "manager-1")
    assert nodes["worker-1"]["Spec"]["Labels"]["kept"] == "yes", "committed state survives"
    assert api(lab, "manager-1", "GET", f"/secrets/{secret['ID']}")["Spec"]["Name"] == "kept-secret"
    assert [h for h, n in nodes.items() if n.get("ManagerStatus")] == ["manager-1"]
    assert nodes["manager-1"]["ManagerStatus"]["Leader"] is True
    node_update(lab, "manager-1", "worker-1", lambda spec: spec["Labels"].__setitem__("after", "recovery"))
    assert nodes_by_host(lab, "manager-1")["worker-1"]["Spec"]["Labels"]["after"] == "recovery"
    eventually(lambda: nodes_by_host(lab, "manager-1")["worker-1"]["Status"]["State"] == "ready",
               what="the worker to reconnect to the recovered manager")
    # The old Raft data is kept aside, not deleted.
    from pathlib import Path

    swarm_dir = Path(lab.node("manager-1").data_dir) / "swarm"
    assert any(p.name.startswith("raft.before-force-new-cluster.") for p in swarm_dir.iterdir())
    # A restart keeps the recovered cluster.
    lab.restart("manager-1")
    eventually(lambda: nodes_by_host(lab, "manager-1")["worker-1"]["Spec"]["Labels"].get("after") == "recovery",
               what="the recovered state after a restart")
    # Forcing again (at once: within the same second, in the fuzz run) keeps both old logs apart.
    api(lab, "manager-1", "POST", "/swarm/init", {"ForceNewCluster": True})
    assert len([p for p in swarm_dir.iterdir() if p.name.startswith("raft.before-force-new-cluster.")]) == 2
    assert nodes_by_host(lab, "manager-1")["worker-1"]["Spec"]["Labels"]["after"] == "recovery"
