"""The real docker CLI's `network ls|inspect|rm|prune` on a manager and a worker of a small lab
(issue 11 item 4): every node lists `ingress`; a node shows its own endpoints of a network
(`Containers`), the nodes with endpoints on it (`Peers`) and, with -v, the services in rotation;
a worker cannot remove a swarm network. `shoal network ls` on the worker shows the same."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from cli.lab import Lab
from tests.swarm.helpers import api, eventually, swarm_lab

IMAGE = "busybox:latest"
MANAGER, WORKER = "manager-1", "worker-1"
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with swarm_lab("w", tmp_path_factory.mktemp("img"), managers=1, workers=1, image=IMAGE) as the_lab:
        yield the_lab


def docker(lab: Lab, node: str, *args: str, ok: bool = True) -> str:
    proc = lab.exec(node, ["docker", *args], timeout=45)
    if ok:
        assert proc.returncode == 0, f"docker {' '.join(args)} on {node}: {proc.stderr}\n{proc.stdout}"
        return proc.stdout
    assert proc.returncode != 0, f"docker {' '.join(args)} on {node} unexpectedly succeeded: {proc.stdout}"
    return proc.stderr


def rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()[1:]]


def inspect(lab: Lab, node: str, *args: str) -> dict[str, Any]:
    shown = json.loads(docker(lab, node, "network", "inspect", *args))
    assert len(shown) == 1
    return dict(shown[0])


def test_network_ls_and_inspect_on_a_manager_and_a_worker(lab: Lab) -> None:
    def ingress_listed(node: str) -> list[list[str]] | None:
        listed = [r for r in rows(docker(lab, node, "network", "ls")) if r[3] == "swarm"]   # host, none: local
        return listed if [r[1:] for r in listed] == [["ingress", "overlay", "swarm"]] else None

    for node in (MANAGER, WORKER):       # every node instantiates the routing mesh
        listed = eventually(functools.partial(ingress_listed, node), what=f"ingress listed on {node}")
        assert listed is not None and len(listed[0][0]) == 12

    net_id = docker(lab, MANAGER, "network", "create", "-d", "overlay", "--label", "tier=front", "front").strip()
    docker(lab, MANAGER, "service", "create", "--detach", "--name", "web", "--network", "front", "--replicas", "2",
           "--replicas-max-per-node", "1", IMAGE, *SLEEPER)

    def running() -> list[dict[str, Any]] | None:
        tasks = [t for t in api(lab, MANAGER, "GET", "/tasks", filters={"service": ["web"]})
                 if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]
        return tasks if len(tasks) == 2 else None

    tasks = eventually(running, timeout=60, what="2 running tasks of web")
    assert tasks is not None
    nodes = {n["ID"]: n for n in api(lab, MANAGER, "GET", "/nodes")}
    by_host = {nodes[t["NodeID"]]["Description"]["Hostname"]: t for t in tasks}
    vtep = {n["Description"]["Hostname"]: n["Status"]["Addr"] for n in nodes.values()}
    peer_name = {n["Status"]["Addr"]: f"{n['Description']['Hostname']}-{n['ID'][:12]}" for n in nodes.values()}

    def front_with_both_endpoints(node: str) -> dict[str, Any] | None:
        net = inspect(lab, node, "front")
        return net if len(net["Containers"]) == 2 else None

    own_endpoints = set()
    for node in (MANAGER, WORKER):
        task = by_host[node]
        address = next(a["Addresses"][0] for a in task["NetworksAttachments"] if a["Network"]["ID"] == net_id)
        assert ["front", "overlay", "swarm"] in [r[1:] for r in rows(docker(lab, node, "network", "ls"))]
        net = eventually(functools.partial(front_with_both_endpoints, node), what=f"front's endpoints on {node}")
        assert net is not None
        assert net["Id"] == net_id and net["Labels"] == {"tier": "front"} and net["Scope"] == "swarm"
        mine = net["Containers"][task["ID"]]        # this node's task only, keyed by its container (task) ID
        assert mine["Name"] == f"web.{task['Slot']}.{task['ID']}" and mine["IPv4Address"] == address
        assert mine["MacAddress"].startswith("02:42:") and len(mine["EndpointID"]) == 64 and mine["IPv6Address"] == ""
        assert net["Containers"]["lb-front"]["Name"] == "front-endpoint"
        own_endpoints.add(net["Containers"]["lb-front"]["EndpointID"])
        # every node with an endpoint; a worker (no store) knows only its own name, the others by address
        assert sorted(net["Peers"], key=lambda p: p["IP"]) == sorted(
            ({"Name": peer_name[ip] if node == MANAGER or ip == vtep[node] else ip, "IP": ip} for ip in vtep.values()),
            key=lambda p: p["IP"])
        verbose = inspect(lab, node, "--verbose", "front")
        service = verbose["Services"]["web"]
        assert sorted((t["Name"], t["Info"]["Host IP"]) for t in service["Tasks"]) == sorted(
            (f"web.{t['Slot']}.{t['ID']}", vtep[host]) for host, t in by_host.items())
        ingress = inspect(lab, node, "ingress")
        assert ingress["Ingress"] is True and list(ingress["Containers"]) == ["ingress-sbox"]

    assert len(own_endpoints) == 2      # each node's own endpoint is its own

    # a worker shows its networks but cannot change them; the manager prunes only what is unused
    err = docker(lab, WORKER, "network", "rm", "front", ok=False)
    assert "Worker nodes can't be used to view or modify cluster state" in err
    out = lab.exec(WORKER, [sys.executable, "-m", "cli.main", "network", "ls"], timeout=30)
    assert out.returncode == 0 and ["front", "overlay", "swarm"] in [r[1:] for r in rows(out.stdout)], out.stderr
    docker(lab, MANAGER, "network", "create", "-d", "overlay", "spare")
    assert docker(lab, MANAGER, "network", "prune", "-f") == "Deleted Networks:\nspare\n\n"
    err = docker(lab, MANAGER, "network", "rm", "front", ok=False)
    assert f"network {net_id} is in use by service" in err
