"""Service create and update answer once the allocator wrote the service's endpoint (manager/
allocator/endpoints.py), on real daemons: a client that creates (or updates) a service with a
network and a published port, inspects it at once and updates it with the version it read is
not refused "update out of sequence", and its inspect already shows the VIPs and the published
port; the inspect after an update that adds a network shows its VIP. (A version read after an
update may still be overtaken by the updater's own write of UpdateStatus, as in Docker: not the
allocator's concern.) Through the leader and through a follower (which forwards the write to the
leader and sees the allocator's write come back through Raft)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cli.lab import Lab
from tests.swarm.helpers import api, leader_host, swarm_lab

IMAGE = "busybox:latest"
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
ROUNDS = 4   # services per path: each one a chance for the allocator's write to land after the read


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with swarm_lab("ew", tmp_path_factory.mktemp("img"), managers=3, workers=0, image=IMAGE) as the_lab:
        yield the_lab


def network(lab: Lab, via: str, name: str) -> str:
    return str(api(lab, via, "POST", "/networks/create", {"Name": name, "Driver": "overlay"})["Id"])


def spec(name: str, networks: list[str]) -> dict[str, Any]:
    return {
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": SLEEPER, "StopGracePeriod": 1_000_000_000},
                         "Networks": [{"Target": n} for n in networks]},
        "Mode": {"Replicated": {"Replicas": 1}},
        "EndpointSpec": {"Mode": "vip", "Ports": [{"TargetPort": 80}]},   # published port: the allocator's
    }


def ingress_id(lab: Lab, via: str) -> str:
    return next(str(n["Id"]) for n in api(lab, via, "GET", "/networks") if n.get("Ingress"))


def allocated(service: dict[str, Any], networks: list[str], ingress: str) -> None:
    """The inspect shows the allocator's write: a VIP on ingress then on each network, and the
    published port it chose."""
    endpoint = service["Endpoint"]
    assert [v["NetworkID"] for v in endpoint.get("VirtualIPs") or []] == [ingress, *networks], endpoint
    ports = endpoint.get("Ports") or []
    assert len(ports) == 1 and 30000 <= ports[0].get("PublishedPort", 0) <= 32767, endpoint


@pytest.mark.parametrize("through", ["leader", "follower"])
def test_create_inspect_update_at_once(lab: Lab, through: str) -> None:
    leader = leader_host(lab, "manager-1")
    via = leader if through == "leader" else next(n for n in lab.nodes if n != leader)
    ingress = ingress_id(lab, via)
    front, back = network(lab, via, f"front-{through}"), network(lab, via, f"back-{through}")
    for i in range(ROUNDS):
        name = f"ew-{through}-{i}"
        service_id = str(api(lab, via, "POST", "/services/create", spec(name, [front]))["ID"])
        created = api(lab, via, "GET", f"/services/{service_id}")
        allocated(created, [front], ingress)
        # an update that needs a new allocation (another network), sent with the version just read
        changed = created["Spec"]
        changed["TaskTemplate"]["Networks"].append({"Target": back})
        api(lab, via, "POST", f"/services/{service_id}/update", changed, version=created["Version"]["Index"])
        updated = api(lab, via, "GET", f"/services/{service_id}")
        allocated(updated, [front, back], ingress)
        assert updated["Endpoint"]["Ports"] == created["Endpoint"]["Ports"]       # kept across the update
