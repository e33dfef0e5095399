"""NodeNetworking.sync works on one set of views from start to end. The agent's NetworkViews take
in new messages while a sync awaits the data path; a network that arrived meanwhile used to meet
a data path reconciled without it: `set_peers` failed "network ... is not set up on this node"
and the whole sync with it, so the node's load balancers were not programmed until a retry
(seen in CI: a container connected to an overlay right after the node had stopped using it could
not reach a service's VIP). The overlay host is a recording stand-in here (no kernel)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from node.networking import NodeNetworking
from overlay import OverlayError, OverlaySpec, Peer
from worker.networking import NetworkViews

VTEP = "198.18.0.11"


def network(name: str, vni: int, third: int) -> dict[str, Any]:
    return {"id": f"{name}id", "name": name, "vni": vni, "subnet": f"10.0.{third}.0/24", "gateway": f"10.0.{third}.1",
            "mtu": 1450, "node_address": f"10.0.{third}.2/24",
            "peers": [{"ip": f"10.0.{third}.9", "mac": f"02:42:0a:00:{third:02x}:09", "vtep": "198.18.0.12"}]}


class RecordingHost:
    """What NodeNetworking.sync asks of an OverlayHost; `during_reconcile` runs in the middle."""

    port = 4789

    def __init__(self, during_reconcile: Callable[[], None]) -> None:
        self.networks: dict[str, OverlaySpec] = {}
        self.peered: list[str] = []
        self.during_reconcile = during_reconcile

    async def reconcile(self, specs: Iterable[OverlaySpec]) -> None:
        wanted = {s.network_id: s for s in specs}
        self.during_reconcile()
        self.networks = wanted

    async def ensure_network(self, spec: OverlaySpec) -> None:
        self.networks[spec.network_id] = spec

    async def set_peers(self, network_id: str, peers: Iterable[Peer]) -> int:
        if network_id not in self.networks:
            raise OverlayError(f"network {network_id} is not set up on this node")
        self.peered.append(network_id)
        return len(list(peers))


async def test_a_network_that_arrives_during_a_sync_waits_for_the_next_one(tmp_path: Path) -> None:
    views = NetworkViews()
    views.apply({"kind": "networks", "type": "complete", "data_path_port": 4789,
                 "networks": [network("ingress", 4096, 0) | {"ingress": True}]})
    arrivals = [{"kind": "networks", "type": "update", "data_path_port": 4789, "networks": [network("ov", 4097, 61)]}]

    def deliver() -> None:                      # the agent takes in a message meanwhile
        for message in arrivals:
            views.apply(message)
        arrivals.clear()

    host = RecordingHost(deliver)
    networking = NodeNetworking(tmp_path, lambda: VTEP)
    balanced: list[set[str]] = []

    async def host_for(port: int) -> RecordingHost:
        return host

    async def balance(h: Any, synced: NetworkViews, specs: dict[str, OverlaySpec]) -> None:
        assert set(synced.views) == set(specs), "the balancing sees the views the overlay was made from"
        balanced.append(set(specs))

    networking._host_for = host_for            # type: ignore[assignment]
    networking._host = host                    # type: ignore[assignment]
    networking._balancing.sync = balance       # type: ignore[method-assign,assignment]

    await networking.sync(views)                # ov arrives while this one reconciles
    assert set(host.networks) == {"ingressid"} and host.peered == ["ingressid"]
    assert balanced == [{"ingressid"}]
    assert "ovid" in views.views

    await networking.sync(views)                # the agent's next sync brings it
    assert set(host.networks) == {"ingressid", "ovid"} and host.peered[-1] == "ovid"
    assert balanced[-1] == {"ingressid", "ovid"}
