"""The predefined `bridge` network's record (worker/localnet/networks.py): its subnet is the first
local pool from the top that overlaps no route of the daemon's namespace and no local network,
never docker0's 172.17.0.0/16; it is made once per data dir and kept; it has dockerd's options
with the `shoal0` bridge, and cannot be removed. A network created without a subnet avoids the
routes of the moment too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engineapi.http import ApiError
from worker.localnet.networks import LocalNetworks


class Routes:
    """A data path that only reports routes (nothing here touches the kernel)."""

    def __init__(self, routes: list[str]) -> None:
        self.routes = routes

    def routed_subnets(self) -> list[str]:
        return list(self.routes)

    def bridge_name(self, network_id: str) -> str:
        return f"br-{network_id[:12]}"

    def ensure_bridge(self, name: str, gateway: str, masquerade: bool, gateway6: str | None = None) -> None:
        self.made = (name, gateway)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the data path was asked to {name}")


def test_the_subnet_avoids_routes_and_is_kept(tmp_path: Path) -> None:
    routes = Routes(["172.31.5.0/24", "172.30.0.0/15", "10.0.0.0/8", "127.0.0.0/8"])
    networks = LocalNetworks(tmp_path / "localnets", tmp_path / "netns", routes)
    bridge = networks.default_bridge()
    assert bridge is not None
    assert bridge["IPAM"]["Config"] == [{"Subnet": "172.29.0.0/16", "Gateway": "172.29.0.1"}]
    assert (bridge["Name"], bridge["Driver"], bridge["Scope"]) == ("bridge", "bridge", "local")
    assert bridge["Options"]["com.docker.network.bridge.default_bridge"] == "true"
    assert networks.bridge_of(bridge) == "shoal0"

    # a restart (another object on the same dir) keeps it, whatever the routes are now
    again = LocalNetworks(tmp_path / "localnets", tmp_path / "netns", Routes(["172.29.0.0/16"]))
    assert again.default_bridge() == bridge
    assert [r["Name"] for r in again.records()] == ["bridge"]


def test_docker0s_subnet_is_never_taken(tmp_path: Path) -> None:
    taken = [f"172.{n}.0.0/16" for n in range(18, 32)]
    networks = LocalNetworks(tmp_path / "localnets", tmp_path / "netns", Routes(taken))
    bridge = networks.default_bridge()
    assert bridge is not None and bridge["IPAM"]["Config"][0]["Subnet"] == "192.168.0.0/20"


async def test_it_cannot_be_removed(tmp_path: Path) -> None:
    networks = LocalNetworks(tmp_path / "localnets", tmp_path / "netns", Routes([]))
    with pytest.raises(ApiError, match="bridge is a pre-defined network and cannot be removed") as raised:
        await networks.remove("bridge")
    assert raised.value.status == 403
    assert await networks.prune(None, []) == []


async def test_a_network_without_a_subnet_avoids_the_routes_too(tmp_path: Path) -> None:
    routes = Routes([])
    networks = LocalNetworks(tmp_path / "localnets", tmp_path / "netns", routes)
    routes.routes = ["172.18.0.0/16"]         # e.g. the swarm's gateway bridge, made after the daemon started
    created = networks.find(await networks.create({"Name": "lan"}))
    assert created is not None and created["IPAM"]["Config"][0]["Subnet"] == "172.19.0.0/16"
    pinned = networks.find(await networks.create({"Name": "pinned", "IPAM": {"Config": [{"Subnet": "172.18.5.0/24"}]}}))
    assert pinned is not None      # a subnet given explicitly is the user's call (dockerd checks networks only)
