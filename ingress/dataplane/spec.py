"""What the data plane is asked to hold: plain, frozen, validated values (no kernel, no I/O).

The caller (the node, fed by the dispatcher) decides every address; these values only say
what each namespace of this node must do with them:

  LbNetwork     the VIP load balancer of one network on this node: its VIP services, each with
                the task addresses in rotation and the ones leaving it (draining);
  Mesh          the routing mesh of this node: the published ports, each with the task ingress
                addresses (and target ports) in rotation and draining, and how the daemon's
                namespace reaches the ingress namespace;
  TaskIngress   one task's side of the routing mesh: what may arrive on its ingress interface,
                and through which nodes' ingress namespaces replies must go back.

A value that could not be programmed is refused at construction, never half-way through a
transaction.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TypeVar

from model.endpoint import endpoint_mac

PROTOCOLS = ("tcp", "udp", "sctp")
IFNAMSIZ = 15
_IFNAME = re.compile(r"^[A-Za-z0-9_.@:-]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

T = TypeVar("T")


def check_device(name: str) -> str:
    if not _IFNAME.match(name) or name in (".", ".."):
        raise ValueError(f"invalid interface name {name!r}")
    return name


def check_port(port: int, what: str = "port") -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"invalid {what} {port!r}: want 1-65535")
    return port


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"invalid protocol {protocol!r}: want one of {', '.join(PROTOCOLS)}")
    return protocol




def _unique(what: str, items: Iterable[T]) -> tuple[T, ...]:
    out = tuple(items)
    seen: set[T] = set()
    for item in out:
        if item in seen:
            raise ValueError(f"{what}: {item} appears twice")
        seen.add(item)
    return out


def _rotation(what: str, backends: Iterable[T], draining: Iterable[T]) -> tuple[tuple[T, ...], tuple[T, ...]]:
    active = _unique(f"{what} backends", backends)
    leaving = _unique(f"{what} draining", draining)
    both = set(active) & set(leaving)
    if both:
        raise ValueError(f"{what}: {sorted(map(str, both))[0]} is both in rotation and draining")
    return active, leaving


# ---------------------------------------------------------------- VIPs


@dataclass(frozen=True)
class VipService:
    """One service's VIP on one network. Every port of the VIP is balanced over `backends`
    (destination port unchanged); `draining` addresses take no new connections but keep the
    ones they have; an address in neither list is gone, and its connections are cut."""

    vip: IPv4Address
    backends: tuple[IPv4Address, ...] = ()
    draining: tuple[IPv4Address, ...] = ()

    def __post_init__(self) -> None:
        active, leaving = _rotation(f"VIP {self.vip}", self.backends, self.draining)
        if self.vip in active or self.vip in leaving:
            raise ValueError(f"VIP {self.vip} is also one of its backends")
        object.__setattr__(self, "backends", active)
        object.__setattr__(self, "draining", leaving)


@dataclass(frozen=True)
class LbNetwork:
    """The VIP load balancer of one network on this node, in that network's LB namespace.

    `address` is the node's own endpoint on the network (the LB namespace's address on
    `device`); connections to a VIP leave the namespace with it as their source, so that the
    replies come back through here. The VIPs become /32 aliases on `device`: the namespace
    answers ARP (and ping) for them on the network."""

    address: IPv4Address
    device: str
    services: tuple[VipService, ...] = ()

    def __post_init__(self) -> None:
        check_device(self.device)
        services = tuple(self.services)
        _unique(f"LB {self.address} VIPs", (s.vip for s in services))
        for s in services:
            if s.vip == self.address:
                raise ValueError(f"VIP {s.vip} is the LB's own address")
        object.__setattr__(self, "services", services)

    def by_vip(self) -> dict[IPv4Address, VipService]:
        return {s.vip: s for s in self.services}


@dataclass(frozen=True)
class TaskVips:
    """The VIPs a task (or an attached container) reaches on its networks, balanced in its own
    namespace as a connection leaves it: the backend answers the task's own address, and no
    packet of the connection passes through the LB namespace."""

    services: tuple[VipService, ...] = ()

    def __post_init__(self) -> None:
        services = tuple(self.services)
        _unique("a task's VIPs", (s.vip for s in services))
        object.__setattr__(self, "services", services)

    def by_vip(self) -> dict[IPv4Address, VipService]:
        return {s.vip: s for s in self.services}


# ---------------------------------------------------------------- routing mesh


@dataclass(frozen=True, order=True)
class IngressBackend:
    """A task on the ingress network: its address there and the port its service listens on
    (the published port is translated to it at the ingress namespace)."""

    address: IPv4Address
    port: int

    def __post_init__(self) -> None:
        check_port(self.port, f"target port of {self.address}")

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class PublishedPort:
    """One ingress-mode published port of the swarm, as every node serves it."""

    protocol: str
    port: int
    backends: tuple[IngressBackend, ...] = ()
    draining: tuple[IngressBackend, ...] = ()

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        check_port(self.port, "published port")
        active, leaving = _rotation(f"{self.protocol}/{self.port}", self.backends, self.draining)
        object.__setattr__(self, "backends", active)
        object.__setattr__(self, "draining", leaving)

    @property
    def key(self) -> tuple[str, int]:
        return self.protocol, self.port


class ClientAddress(enum.Enum):
    """What source address a task sees for a connection through the routing mesh.

    PRESERVE: the client's own (the ingress namespace only DNATs; each task on ingress routes
    its replies back through the node the connection came in by, see TaskIngress);
    SNAT: the ingress endpoint of the node the connection came in by (Docker's mesh; no
    per-task state)."""

    PRESERVE = "preserve"
    SNAT = "snat"


@dataclass(frozen=True)
class Mesh:
    """The routing mesh of this node.

    In the daemon's namespace, a connection to any local address on a published port (from
    outside, or from the node itself, `localhost:P` included) is DNATed to `sandbox_address`,
    the ingress namespace's address on the link `host_device` leads to (Docker's
    docker_gwbridge endpoint of ingress-sbox); the port is reserved with a bound socket. In
    the ingress namespace, it is DNATed on to a task's ingress address and target port,
    round robin, and (SNAT mode) its source becomes `ingress_address`, the node's endpoint
    on the ingress network."""

    ingress_address: IPv4Address
    sandbox_address: IPv4Address
    host_device: str
    ports: tuple[PublishedPort, ...] = ()
    client_address: ClientAddress = ClientAddress.PRESERVE

    def __post_init__(self) -> None:
        check_device(self.host_device)
        ports = tuple(self.ports)
        _unique("published ports", (f"{p.protocol}/{p.port}" for p in ports))
        object.__setattr__(self, "ports", ports)

    def by_key(self) -> dict[tuple[str, int], PublishedPort]:
        return {p.key: p for p in self.ports}


@dataclass(frozen=True, order=True)
class IngressNode:
    """A node's ingress namespace as the ingress network sees it: its endpoint address and
    MAC (by default the overlay's 02:42 + address)."""

    address: IPv4Address
    mac: str = ""

    def __post_init__(self) -> None:
        mac = (self.mac or endpoint_mac(self.address)).lower()
        if not _MAC.match(mac):
            raise ValueError(f"ingress node {self.address}: invalid MAC {self.mac!r}")
        object.__setattr__(self, "mac", mac)

    @property
    def mark(self) -> int:
        """The connection mark, routing-rule mark and routing table of replies through this
        node: its address as a 32-bit number (the same on every task, every node, every life)."""
        return int(self.address)


@dataclass(frozen=True)
class TaskIngress:
    """One task's interface on the ingress network.

    Only the listed (protocol, target port) pairs may arrive on `address` (Docker's per-task
    filter: everything else to or from the ingress address is dropped, answers excepted).
    With ClientAddress.PRESERVE, `nodes` lists every node's ingress namespace: a connection
    that arrived from one of them (told by its source MAC) is marked with it, and its replies
    are routed back through it."""

    device: str
    address: IPv4Address
    ports: tuple[tuple[str, int], ...] = ()
    nodes: tuple[IngressNode, ...] = field(default=())

    def __post_init__(self) -> None:
        check_device(self.device)
        ports = _unique(f"task {self.address} ports", ((check_protocol(p), check_port(n)) for p, n in self.ports))
        nodes = _unique(f"task {self.address} ingress nodes", self.nodes)
        _unique(f"task {self.address} ingress node MACs", (n.mac for n in nodes))
        _unique(f"task {self.address} ingress node addresses", (n.address for n in nodes))
        object.__setattr__(self, "ports", tuple(sorted(ports)))
        object.__setattr__(self, "nodes", tuple(sorted(nodes)))
