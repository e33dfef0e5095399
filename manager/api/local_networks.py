"""The node-local view of swarm networks, as dockerd's network routes show it beside the cluster view
(../shared/networking.md §1.1), and the contract of whatever on the node knows it.

Theory of operation: a network exists on a node once the node instantiates it (a task of the node
uses it, or it is ingress, which every node instantiates). What the node knows of it, `LocalNetwork`,
is plain facts: its head as the dispatcher pushed it, this node's own endpoint, the task endpoints
in this node's sandboxes, the nodes with endpoints on it (`Peers`) and the services in rotation.
The node side (node/networking.py) implements `LocalNetworks` and the daemon registers it under
`LOCAL_NETWORKS`; without one (tests, a daemon outside any swarm) the node has no local networks.

`local_api()` turns those facts into the Engine API object, pure: on a manager its base is the
cluster object (`Network.to_api()`: labels, options and creation time as stored), on a worker a
head built from the facts. On top come what only the node knows:
- `Containers`: this node's task endpoints, keyed by container ID (= task ID), and the node's own
  endpoint as Docker names its load-balancer sandbox: `<net>-sbox` on the ingress network, else
  `lb-<net>`, both named `<net>-endpoint`;
      {"Name": "web.1.<taskid>", "EndpointID": "<64 hex>", "MacAddress": "02:42:0a:00:01:05",
       "IPv4Address": "10.0.1.5/24", "IPv6Address": ""}
  (only in the detailed view: an inspect; a list shows `{}` as dockerd's API ≥ 1.28 does);
- `Peers`: `[{"Name": "<hostname>-<node id[:12]>", "IP": "<data-path address>"}]`, one per node
  with an endpoint on the network, this one included (omitted when empty);
- with `verbose`, `Services`: `{"web": {"VIP": "10.0.1.2", "Ports": ["Target: 80, Publish: 8080"],
  "LocalLBIndex": 257, "Tasks": [{"Name", "EndpointID", "EndpointIP": "10.0.1.5",
  "Info": {"Host IP": "<data-path address>"}}]}}` (omitted when empty).
Endpoint IDs are derived from the network and the endpoint, so every node names one endpoint
alike. Go's encoder sorts map keys; so are `Containers` and `Services` here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from model.endpoint import endpoint_mac

VXLAN_ID_LIST = "com.docker.network.driver.overlay.vxlanid_list"
ZERO_TIME = "0001-01-01T00:00:00Z"      # Go's zero time.Time, what dockerd shows for an unknown time

Json = dict[str, Any]


@dataclass(frozen=True)
class LocalEndpoint:
    """A task's endpoint in a sandbox of this node."""

    container_id: str          # the task ID: containers are named by it
    name: str                  # the task's name, "web.1.<taskid>"
    address: str               # "10.0.1.5/24"


@dataclass(frozen=True)
class LocalServiceTask:
    name: str
    task_id: str
    address: str               # "10.0.1.5"
    host_ip: str               # the data-path address of the node running it ("" if unknown)


@dataclass(frozen=True)
class LocalService:
    name: str
    service_id: str
    vip: str = ""
    tasks: tuple[LocalServiceTask, ...] = ()


@dataclass(frozen=True)
class LocalPeer:
    ip: str                    # the node's data-path address
    name: str = ""             # "<hostname>-<12hex>" when the node side knows it


@dataclass(frozen=True)
class LocalNetwork:
    id: str
    name: str
    subnet: str
    gateway: str
    vni: int
    internal: bool = False
    ingress: bool = False
    attachable: bool = False
    node_address: str = ""     # this node's own endpoint, "10.0.0.3/24" ("" while unallocated)
    endpoints: tuple[LocalEndpoint, ...] = ()
    peers: tuple[LocalPeer, ...] = ()
    services: tuple[LocalService, ...] = ()
    created: str = ""          # the cluster object's CreatedAt, or when this node first had it
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)


class LocalNetworks(Protocol):
    async def local_networks(self) -> list[LocalNetwork]:
        """The swarm networks instantiated on this node, now."""
        ...


LOCAL_NETWORKS = web.AppKey("local_networks", LocalNetworks)


async def local_networks_of(app: web.Application) -> list[LocalNetwork]:
    source = app.get(LOCAL_NETWORKS)
    return await source.local_networks() if source is not None else []




def endpoint_id(network_id: str, key: str) -> str:
    """A 64-hex endpoint ID, the same on every node for one endpoint."""
    return hashlib.sha256(f"{network_id}/{key}".encode()).hexdigest()


def _ip(address: str) -> str:
    return address.split("/", 1)[0]


def lb_sandbox(net: LocalNetwork) -> tuple[str, str]:
    """(Containers key, endpoint name) of the node's own endpoint, as libnetwork names its
    load-balancer sandbox."""
    key = f"{net.name}-sbox" if net.ingress else f"lb-{net.name}"
    return key, f"{net.name}-endpoint"


def _endpoint(endpoint: str, name: str, address: str) -> Json:
    return {"Name": name, "EndpointID": endpoint, "MacAddress": endpoint_mac(_ip(address)),
            "IPv4Address": address, "IPv6Address": ""}


def containers(net: LocalNetwork) -> Json:
    out: Json = {}
    for ep in net.endpoints:
        out[ep.container_id] = _endpoint(endpoint_id(net.id, ep.container_id), ep.name, ep.address)
    if net.node_address:    # every node has one under the same key: its address tells them apart
        key, name = lb_sandbox(net)
        out[key] = _endpoint(endpoint_id(net.id, f"{key}@{_ip(net.node_address)}"), name, net.node_address)
    return dict(sorted(out.items()))


def peers(net: LocalNetwork, names: Mapping[str, str]) -> list[Json]:
    """One entry per node with an endpoint on the network; `names` (data-path address -> name)
    wins over what the node side knew; else the address itself names the node."""
    out = {}
    for peer in net.peers:
        if peer.ip:
            out[peer.ip] = {"Name": names.get(peer.ip) or peer.name or peer.ip, "IP": peer.ip}
    return [out[ip] for ip in sorted(out)]


def services(net: LocalNetwork, ports: Mapping[str, list[str]]) -> Json:
    """`Services` of the verbose view; `ports` (service ID -> ["Target: 80, Publish: 8080"]) from
    the cluster store where there is one. `LocalLBIndex` numbers the services of the network from
    257 in name order (Docker's node-local firewall mark)."""
    out: Json = {}
    for index, svc in enumerate(sorted(net.services, key=lambda s: s.name)):
        out[svc.name] = {
            "VIP": svc.vip, "Ports": list(ports.get(svc.service_id, [])), "LocalLBIndex": 257 + index,
            "Tasks": [{"Name": t.name, "EndpointID": endpoint_id(net.id, t.task_id), "EndpointIP": t.address,
                       "Info": {"Host IP": t.host_ip}} for t in sorted(svc.tasks, key=lambda t: t.name)],
        }
    return out


def worker_base(net: LocalNetwork) -> Json:
    """The cluster-view fields as a node without the store knows them (the key order of
    `Network.to_api()`)."""
    config: Json = {"Subnet": net.subnet}
    if net.gateway:
        config["Gateway"] = net.gateway
    return {
        "Name": net.name, "Id": net.id, "Created": net.created or ZERO_TIME, "Scope": "swarm", "Driver": "overlay",
        "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None, "Config": [config]},
        "Internal": net.internal, "Attachable": net.attachable, "Ingress": net.ingress,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": {},
        "Options": {**net.options, VXLAN_ID_LIST: str(net.vni)}, "Labels": dict(net.labels),
    }


def local_api(net: LocalNetwork, base: Json | None = None, *, detailed: bool = True, verbose: bool = False,
              peer_names: Mapping[str, str] | None = None, ports: Mapping[str, list[str]] | None = None) -> Json:
    """The Engine API object of a network instantiated on this node: `base` (the cluster object,
    on a manager) or the worker's head, with this node's `Containers`, `Peers` and, when
    `verbose` (and `detailed`), `Services`."""
    out = dict(base) if base is not None else worker_base(net)
    out["Containers"] = containers(net) if detailed else {}
    listed = peers(net, peer_names or {})
    if listed:
        out["Peers"] = listed
    if detailed and verbose:
        shown = services(net, ports or {})
        if shown:
            out["Services"] = shown
    return out
