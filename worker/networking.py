"""What this node's tasks need of the network, as the dispatcher describes it, and the contract of
whatever programs the data path for them.

The dispatcher pushes `{"kind": "networks", ...}` messages on the session stream: a complete set
first, then increments (manager/dispatcher/network_push.py). `NetworkViews` (pure) holds what the
node was told. A `TaskNetworking` implementation (node/networking.py composes overlay/ and
ingress/ behind it) makes the kernel match those views, and gives each task a sandbox: the
network namespace its container joins, with one interface per attached network and the
embedded DNS at 127.0.0.11, plus the resolv.conf and hosts lines the container sees.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from model import Task

DEFAULT_DATA_PATH_PORT = 4789


@dataclass(frozen=True)
class PeerView:
    """An endpoint on another node: its address, MAC and that node's VXLAN tunnel address."""

    ip: str
    mac: str
    vtep: str
    node: bool = False      # that node's own endpoint (its LB / ingress namespace), not a task


@dataclass(frozen=True)
class TaskRecord:
    """A task in rotation, as the embedded DNS names it."""

    name: str
    id: str
    container_id: str
    hostname: str
    address: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortView:
    """An ingress-mode published port of a service."""

    protocol: str
    published: int
    target: int


@dataclass(frozen=True)
class ServiceView:
    name: str
    id: str
    mode: str = "vip"          # "vip" | "dnsrr"
    vip: str = ""
    aliases: tuple[str, ...] = ()
    tasks: tuple[TaskRecord, ...] = ()
    ports: tuple[PortView, ...] = ()


@dataclass(frozen=True)
class NetworkView:
    id: str
    name: str
    vni: int
    subnet: str
    gateway: str
    mtu: int
    internal: bool = False
    ingress: bool = False
    attachable: bool = False
    node_address: str = ""
    peers: frozenset[PeerView] = field(default_factory=frozenset)
    services: tuple[ServiceView, ...] = ()

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> NetworkView:
        """Parse one view; a malformed one raises ValueError naming the field."""
        try:
            view = cls(
                id=_text(doc, "id", required=True), name=_text(doc, "name"), vni=int(doc["vni"]),
                subnet=str(ipaddress.ip_network(str(doc["subnet"]))), gateway=str(ipaddress.ip_address(doc["gateway"])),
                mtu=int(doc.get("mtu") or 1450), internal=bool(doc.get("internal")), ingress=bool(doc.get("ingress")),
                attachable=bool(doc.get("attachable")), node_address=_text(doc, "node_address"),
                peers=frozenset(PeerView(str(p["ip"]), str(p["mac"]).lower(), str(p["vtep"]), bool(p.get("node")))
                                for p in doc.get("peers") or []),
                services=tuple(_service(s) for s in doc.get("services") or []),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad network view {doc.get('id', '?') if isinstance(doc, Mapping) else '?'}: {e!r}") \
                from None
        if not 1 <= view.vni < 1 << 24:
            raise ValueError(f"bad network view {view.id}: VXLAN id {view.vni} out of range")
        return view


def _text(doc: Mapping[str, Any], key: str, required: bool = False) -> str:
    value = doc.get(key)
    if value is None or value == "":
        if required:
            raise KeyError(key)
        return ""
    return str(value)


def _address(value: Any) -> str:
    """"10.0.1.5" from "10.0.1.5" or "10.0.1.5/24"; ValueError for anything else."""
    return str(ipaddress.ip_interface(str(value)).ip)


def _service(doc: Mapping[str, Any]) -> ServiceView:
    tasks = tuple(TaskRecord(name=str(t["name"]), id=str(t["id"]), container_id=str(t.get("container_id") or t["id"]),
                             hostname=str(t.get("hostname") or ""), address=_address(t["address"]),
                             aliases=tuple(str(a) for a in t.get("aliases") or ()))
                  for t in doc.get("tasks") or ())
    return ServiceView(name=str(doc["name"]), id=str(doc.get("id") or ""), mode=str(doc.get("mode") or "vip"),
                       vip=_address(doc["vip"]) if doc.get("vip") else "",
                       aliases=tuple(str(a) for a in doc.get("aliases") or ()), tasks=tasks,
                       ports=tuple(PortView(str(p.get("protocol") or "tcp").lower(), int(p["published"]),
                                            int(p["target"])) for p in doc.get("ports") or ()))


class NetworkViews:
    """The networks this node was told about, kept exactly as the last messages say."""

    def __init__(self) -> None:
        self.views: dict[str, NetworkView] = {}
        self.data_path_port = DEFAULT_DATA_PATH_PORT
        self.known = False          # a complete set has arrived
        self.version = 0            # bumps on every change

    def snapshot(self) -> NetworkViews:
        """These views as they are now: later messages change the original, never the copy
        (`apply` replaces `views`, it never edits the dict)."""
        copy = NetworkViews()
        copy.views, copy.data_path_port, copy.known, copy.version = (self.views, self.data_path_port, self.known,
                                                                     self.version)
        return copy

    def apply(self, message: Mapping[str, Any]) -> list[str]:
        """Take in one `networks` message; returns the problems with views it had to skip."""
        problems: list[str] = []
        parsed: dict[str, NetworkView] = {}
        for doc in message.get("networks") or []:
            try:
                view = NetworkView.from_wire(doc)
            except ValueError as e:
                problems.append(str(e))
                continue
            parsed[view.id] = view
        port = int(message.get("data_path_port") or DEFAULT_DATA_PATH_PORT)
        if message.get("type") == "complete":
            new = parsed
            self.known = True
        else:
            new = {k: v for k, v in self.views.items() if k not in set(message.get("removed") or [])}
            new.update(parsed)
        if new != self.views or port != self.data_path_port:
            self.views, self.data_path_port = new, port
            self.version += 1
        return problems

    def task_networks(self, task: Task) -> list[tuple[NetworkView, str]]:
        """(view, "10.0.1.5/24") for each of the task's attachments, in order; KeyError names a
        network the node has not been told about yet."""
        out = []
        for attachment in task.networks_attachments:
            network_id = str((attachment.get("Network") or {}).get("ID") or "")
            addresses = attachment.get("Addresses") or []
            if not network_id or not addresses:
                continue
            view = self.views.get(network_id)
            if view is None:
                raise KeyError(network_id)
            out.append((view, str(addresses[0])))
        return out


@dataclass(frozen=True)
class TaskSandbox:
    """What a task's container is given: the network namespace to join and its name service."""

    netns_path: str
    resolv_conf: str                 # the whole /etc/resolv.conf
    hosts: tuple[str, ...] = ()      # extra /etc/hosts lines, e.g. "10.0.1.5\tweb-1"


class TaskNetworking(Protocol):
    async def sync(self, views: NetworkViews) -> None:
        """Make the node's networks, peers and DNS records match `views`."""
        ...

    async def sandbox(self, task: Task) -> TaskSandbox:
        """The task's sandbox, made if missing (idempotent). Raises `worker.exec.TemporaryError`
        while a network of the task is not known yet."""
        ...

    async def release(self, task_id: str) -> None:
        """Remove the task's sandbox, once its container is gone (idempotent)."""
        ...

    async def retain(self, task_ids: Iterable[str]) -> None:
        """Remove every sandbox not of these tasks (after a complete set: leftovers of tasks the
        node no longer has, e.g. from before a restart)."""
        ...
