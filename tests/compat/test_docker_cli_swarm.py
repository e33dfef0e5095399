"""The real docker CLI driving swarm membership on lab hosts: init, join-token, node ls/inspect/
update, info."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.swarm.helpers import eventually


def docker(lab, node: str, *args: str) -> str:
    proc = lab.exec(node, ["docker", *args], timeout=60)
    assert proc.returncode == 0, f"docker {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def test_docker_cli_drives_swarm_and_nodes(make_lab) -> None:
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is not installed (deploy/install.sh installs it)")
    lab = make_lab(managers=1, workers=1, swarm=False)
    out = docker(lab, "manager-1", "swarm", "init", "--advertise-addr", lab.node("manager-1").address)
    assert "Swarm initialized: current node (" in out and "docker swarm join --token SWMTKN-1-" in out
    join_out = docker(lab, "manager-1", "swarm", "join-token", "worker")
    assert "To add a worker to this swarm, run the following command:" in join_out
    assert f"{lab.node('manager-1').address}:2377" in join_out
    token = docker(lab, "manager-1", "swarm", "join-token", "-q", "worker").strip()
    out = docker(lab, "worker-1", "swarm", "join", "--token", token, f"{lab.node('manager-1').address}:2377")
    assert "This node joined a swarm as a worker." in out

    listing = eventually(lambda: (lambda o: o if "worker-1" in o and o.count("Ready") == 2 else "")(
        docker(lab, "manager-1", "node", "ls")), what="both nodes ready in docker node ls")
    header, *rows = listing.strip().splitlines()
    assert header.split()[:3] == ["ID", "HOSTNAME", "STATUS"]
    manager_row = next(r for r in rows if "manager-1" in r)
    assert " * " in manager_row and "Leader" in manager_row and "Active" in manager_row

    inspected = json.loads(docker(lab, "manager-1", "node", "inspect", "worker-1"))
    assert inspected[0]["Description"]["Hostname"] == "worker-1"
    assert inspected[0]["Spec"]["Role"] == "worker"
    pretty = docker(lab, "manager-1", "node", "inspect", "--pretty", "self")
    assert "Hostname:" in pretty and "manager-1" in pretty

    docker(lab, "manager-1", "node", "update", "--availability", "drain", "worker-1")
    assert "Drain" in next(r for r in docker(lab, "manager-1", "node", "ls").splitlines() if "worker-1" in r)
    docker(lab, "manager-1", "node", "update", "--label-add", "zone=east", "worker-1")
    labels = json.loads(docker(lab, "manager-1", "node", "inspect", "worker-1"))[0]["Spec"]["Labels"]
    assert labels == {"zone": "east"}

    info = docker(lab, "manager-1", "info")
    assert "Swarm: active" in info and "Is Manager: true" in info
    assert "Managers: 1" in info and "Nodes: 2" in info
    worker_info = docker(lab, "worker-1", "info")
    assert "Swarm: active" in worker_info and "Is Manager: false" in worker_info
    err = lab.exec("worker-1", ["docker", "node", "ls"])
    assert err.returncode != 0 and "Worker nodes can't be used to view or modify cluster state" in err.stderr
