"""The node's service VIPs and routing mesh: the dispatcher's network views, programmed into the
ingress data plane (ingress/dataplane) in namespaces the overlay host makes (overlay/).

Theory of operation (called by NodeNetworking under its lock, after the overlay is in place):
- **VIP load balancer**, per user network with a VIP service: a sandbox `lb-<network id>` whose
  only interface is the node's own endpoint on the network (`node_address`, MAC 02:42 + it,
  which every other node has as a peer); the VIPs become aliases there, so it answers ARP and
  ping for them on the bridge, and spreads connections over the service's tasks in rotation on
  every node (`set_lb`). Not on ingress: the mesh DNATs straight to tasks.
- **Each sandbox's own VIPs** (`set_vips`): every task or attached container on such a network
  balances the same VIPs itself as its connections leave, so they skip the LB namespace and
  the backend sees the task's own address; the LB namespace balances what a sandbox's table
  does not (connections older than it). Set before a task's container starts when its networks
  have VIPs, and by every sync for every sandbox, together with the LBs and the mesh (a thread
  each, bounded). What a sandbox should hold is taken when its step runs, and the sync reads
  the sandboxes again once the LBs' wanted state is known, so a sandbox made during a sync
  never keeps the VIPs from before it. The node's ack follows the whole sync: a backend that
  leaves rotation has left every sandbox's table too.
- **Routing mesh**, on every node: a sandbox `ingress-sbox` with the node's ingress endpoint
  and an interface on the gateway bridge; the daemon's namespace DNATs published ports to it,
  and it DNATs on to a task's ingress address and target port (`set_mesh`).
- **Each task on ingress** gets its side of the mesh (`set_task`): only its published target
  ports arrive on its ingress address, and replies go back through the node they came in by,
  so the task sees the client's own address. Programmed before the container starts (so
  before the task can be in rotation), and again whenever the nodes or ports change.
- **Host-mode ports** of this node's tasks (`--publish mode=host`): DNAT in the daemon's
  namespace to the task's address on the gateway bridge, set before its container starts and
  kept in `<run_dir>/hostports.json` so a restarted daemon rewrites the table with them.
- **Drain**: a task that leaves rotation (its desired state passed RUNNING, or it stopped
  running) but whose endpoint still exists somewhere (a peer, or a sandbox here) is kept as
  *draining*: no new connection, open ones carry on. Once its endpoint is gone, it is dropped,
  and the data plane flushes its conntrack entries (a reset, not a hang). "Left rotation" is
  against what this node held last: its memory, or after a restart what the kernel's maps hold
  (`held_lb`/`held_mesh`), so a restart cuts no draining connection.

Everything is level-triggered: each call says the whole wanted state of a namespace, computed
from the views; what was programmed last is cached, and an unchanged namespace costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import TypeVar

from ca.node_tls import write_atomic
from ingress.dataplane import (
    HostPort,
    IngressBackend,
    IngressDataPlane,
    IngressNode,
    LbNetwork,
    Mesh,
    PublishedPort,
    TaskIngress,
    TaskVips,
    VipService,
)
from model import Task
from overlay import Attachment, OverlayHost, OverlaySpec, SandboxRecord
from worker.networking import NetworkView, NetworkViews

log = logging.getLogger("shoal.networking")

HOST_PORTS_FILE = "hostports.json"
SANDBOXES_AT_ONCE = 32      # task namespaces programmed together (a thread each, while it runs)
INGRESS_SANDBOX = "ingress-sbox"
LB_PREFIX = "lb-"
LB_DEVICE = "eth0"

T = TypeVar("T")


def lb_key(network_id: str) -> str:
    return f"{LB_PREFIX}{network_id}"


def is_balancer(key: str) -> bool:
    """Is a sandbox key one of this module's namespaces (not a task's)?"""
    return key == INGRESS_SANDBOX or key.startswith(LB_PREFIX)


def _drain(current: Iterable[T], previous: Iterable[T], alive: set[IPv4Address],
           address: Callable[[T], IPv4Address]) -> tuple[T, ...]:
    """What left rotation since `previous` but still has an endpoint somewhere: draining."""
    now = set(current)
    return tuple(sorted({b for b in previous if b not in now and address(b) in alive}, key=str))


def lb_former(lb: LbNetwork | None) -> dict[IPv4Address, tuple[IPv4Address, ...]]:
    """Per VIP, every backend a load balancer held (in rotation or draining)."""
    return {s.vip: (*s.backends, *s.draining) for s in lb.services} if lb is not None else {}


def mesh_former(mesh: Mesh | None) -> dict[tuple[str, int], tuple[IngressBackend, ...]]:
    """Per published port, every backend a mesh held (in rotation or draining)."""
    return {key: (*p.backends, *p.draining) for key, p in mesh.by_key().items()} if mesh is not None else {}


def wanted_lb(view: NetworkView, former: Mapping[IPv4Address, Iterable[IPv4Address]],
              alive: set[IPv4Address]) -> LbNetwork | None:
    """The VIP load balancer of one network on this node; None when it needs none. `former`:
    per VIP, every backend the load balancer held until now (what leaves rotation drains)."""
    if view.ingress or not view.node_address:
        return None
    own = IPv4Interface(view.node_address).ip
    services = []
    for service in view.services:
        if service.mode != "vip" or not service.vip or (vip := IPv4Address(service.vip)) == own:
            continue
        backends = tuple(dict.fromkeys(a for t in service.tasks if (a := IPv4Address(t.address)) != vip))
        services.append(VipService(vip, backends, _drain(backends, former.get(vip, ()), alive, lambda a: a)))
    if not services:
        return None
    return LbNetwork(own, LB_DEVICE, tuple(services))


def wanted_mesh(view: NetworkView, sandbox_address: IPv4Address, host_device: str,
                former: Mapping[tuple[str, int], Iterable[IngressBackend]], alive: set[IPv4Address]) -> Mesh | None:
    """The routing mesh of this node, from the ingress network's view; None until the node has
    its endpoint on ingress. `former`: per published port, every backend held until now."""
    if not view.node_address:
        return None
    ports: dict[tuple[str, int], PublishedPort] = {}
    for service in view.services:
        for port in service.ports:
            key = (port.protocol, port.published)
            if key in ports:        # two services on one port: the allocator refuses it; keep the first
                continue
            backends = tuple(dict.fromkeys(IngressBackend(IPv4Address(t.address), port.target)
                                           for t in service.tasks))
            ports[key] = PublishedPort(port.protocol, port.published, backends,
                                       _drain(backends, former.get(key, ()), alive, lambda b: b.address))
    return Mesh(IPv4Interface(view.node_address).ip, sandbox_address, host_device, tuple(ports.values()))


def ingress_nodes(view: NetworkView) -> tuple[IngressNode, ...]:
    """Every node's ingress namespace (its endpoint on ingress), this node's included."""
    nodes = {IPv4Address(p.ip) for p in view.peers if p.node}
    if view.node_address:
        nodes.add(IPv4Interface(view.node_address).ip)
    return tuple(IngressNode(a) for a in sorted(nodes))


def wanted_task(view: NetworkView, service_id: str, device: str, address: IPv4Address) -> TaskIngress:
    """A task's side of the mesh: its service's published target ports, and every node."""
    ports = {(p.protocol, p.target) for s in view.services if s.id == service_id for p in s.ports}
    return TaskIngress(device, address, tuple(sorted(ports)), ingress_nodes(view))


def task_host_ports(task: Task, address: IPv4Address) -> tuple[HostPort, ...]:
    """The host-mode ports a task publishes (its endpoint, as the scheduler placed it); one
    asked as 0 (a random port, in Docker) is not supported and left out."""
    out = []
    for p in (task.endpoint or {}).get("Ports") or ():
        if isinstance(p, dict) and str(p.get("PublishMode") or "").lower() == "host" and p.get("PublishedPort"):
            out.append(HostPort(str(p.get("Protocol") or "tcp").lower(), int(p["PublishedPort"]), address,
                                int(p.get("TargetPort") or 0)))
    return tuple(out)


def alive_on(view: NetworkView, records: Iterable[SandboxRecord]) -> set[IPv4Address]:
    """The endpoint addresses that exist on a network: peers elsewhere, sandboxes here."""
    out = {IPv4Address(p.ip) for p in view.peers}
    out.update(a.address.ip for r in records for a in r.attachments if a.network_id == view.id)
    return out


@dataclass(frozen=True)
class _TaskPlace:
    service_id: str
    device: str
    address: IPv4Address


class ServiceBalancing:
    """See the module comment. One per NodeNetworking; every method is called under its lock."""

    def __init__(self, plane: IngressDataPlane, run_dir: Path) -> None:
        self.plane = plane
        self._host_ports_file = run_dir / HOST_PORTS_FILE
        self._host_ports: dict[str, tuple[HostPort, ...]] = self._load_host_ports()
        self._lb: dict[str, LbNetwork] = {}          # network id -> what its LB holds
        self._mesh: Mesh | None = None
        self._tasks: dict[str, TaskIngress] = {}      # task id -> what its sandbox holds
        self._places: dict[str, _TaskPlace] = {}      # task id -> where it sits on ingress
        self._vips_wanted: dict[str, LbNetwork] = {}  # network id -> its VIPs, as last wanted
        self._vips: dict[str, TaskVips] = {}          # sandbox key -> what its VIP table holds
        self._vip_locks: dict[str, asyncio.Lock] = {}  # sandbox key -> one VIP step at a time

    async def sync(self, host: OverlayHost, views: NetworkViews, specs: dict[str, OverlaySpec]) -> None:
        """Make every namespace of this node match `views` (the overlay networks exist). First
        what each network's LB wants (and its sandbox), then every namespace at once: the LBs,
        the mesh, every sandbox's own table (a change that deletes anything waits out an RCU
        grace period in each namespace's commit, ~16 ms here; together the waits overlap). A
        namespace that fails does not stop the others; the errors are raised at the end."""
        records = await host.sandboxes()
        problems: list[str] = []
        lbs: list[tuple[NetworkView, LbNetwork]] = []
        balanced: set[str] = set()
        for network_id, view in views.views.items():
            if view.ingress:
                continue
            try:
                want = await self._wanted_lb(host, view, specs[network_id], records)
            except Exception as exc:
                balanced.add(network_id)
                problems.append(f"VIP load balancer of network {view.name}: {exc}")
                continue
            if want is not None:
                balanced.add(network_id)
                lbs.append((view, want))
        for network_id in {k[len(LB_PREFIX):] for k in records if k.startswith(LB_PREFIX)} - balanced:
            await self._drop_lb(host, network_id)
        for network_id in set(self._vips_wanted) - balanced:
            del self._vips_wanted[network_id]
        ingress = next((v for v in views.views.values() if v.ingress), None)
        # Read again: a sandbox made since the first read took its VIPs from before this sync's
        # LBs (`_set_vips` takes them when it runs); one made from now on takes these.
        sandboxes = await host.sandboxes()
        steps = {f"VIP load balancer of network {view.name}": self._set_lb(host, view, want) for view, want in lbs}
        if ingress is not None:
            steps["routing mesh"] = self._sync_mesh(host, ingress, specs[ingress.id], records)
        results = await asyncio.gather(self._sync_sandboxes(host, ingress, sandboxes), *steps.values(),
                                       return_exceptions=True)
        for what, result in zip(["sandboxes", *steps], results, strict=True):
            if isinstance(result, list):
                problems += result
            elif isinstance(result, Exception):
                problems.append(f"{what}: {result}")
            elif isinstance(result, BaseException):
                raise result
        if problems:
            raise RuntimeError("; ".join(problems))

    @staticmethod
    async def _endpoint(host: OverlayHost, key: str, spec: OverlaySpec, address: str,
                        records: dict[str, SandboxRecord], gateway: bool) -> None:
        """The sandbox `key` with the node's endpoint on the network (and a way out or not)."""
        record = records.get(key)
        if (record is not None and (record.gateway is not None) == gateway
                and [(a.network_id, str(a.address)) for a in record.attachments] == [(spec.network_id, address)]):
            return
        await host.create_sandbox(key)
        await host.attach(key, [Attachment(spec, IPv4Interface(address))], gateway=gateway)
        records.update(await host.sandboxes())

    async def _wanted_lb(self, host: OverlayHost, view: NetworkView, spec: OverlaySpec,
                         records: dict[str, SandboxRecord]) -> LbNetwork | None:
        """What one network's LB should hold (None: it needs none), its sandbox made; the
        sandboxes' own tables follow it from now on."""
        previous = self._lb.get(view.id)
        key = lb_key(view.id)
        former: Mapping[IPv4Address, Iterable[IPv4Address]]
        if previous is not None:
            former = lb_former(previous)
        elif key in records:        # first sync of this life (or after a failure): the kernel says
            former = await self.plane.held_lb(view.id, host.sandbox_path(key))
        else:
            former = {}
        want = wanted_lb(view, former, alive_on(view, records.values()))
        if want is None:
            return None
        self._vips_wanted[view.id] = want
        await self._endpoint(host, key, spec, view.node_address, records, gateway=False)
        return want

    async def _set_lb(self, host: OverlayHost, view: NetworkView, want: LbNetwork) -> None:
        if self._lb.get(view.id) != want:
            self._lb.pop(view.id, None)              # unknown until the data plane took it
            await self.plane.set_lb(view.id, host.sandbox_path(lb_key(view.id)), want)
            self._lb[view.id] = want

    async def _drop_lb(self, host: OverlayHost, network_id: str) -> None:
        self._lb.pop(network_id, None)
        await self.plane.remove_lb(network_id, None)
        await host.delete_sandbox(lb_key(network_id))

    async def _sync_mesh(self, host: OverlayHost, view: NetworkView, spec: OverlaySpec,
                         records: dict[str, SandboxRecord]) -> None:
        if not view.node_address:
            return
        await self._endpoint(host, INGRESS_SANDBOX, spec, view.node_address, records, gateway=True)
        record = records.get(INGRESS_SANDBOX)
        if record is None or record.gateway is None:
            raise RuntimeError("the ingress sandbox has no gateway interface")
        former: Mapping[tuple[str, int], Iterable[IngressBackend]]
        if self._mesh is not None:
            former = mesh_former(self._mesh)
        else:                       # first sync of this life (or after a failure): the kernel says
            former = await self.plane.held_mesh(host.sandbox_path(INGRESS_SANDBOX))
        want = wanted_mesh(view, record.gateway.ip, host.gateway_bridge, former, alive_on(view, records.values()))
        if want is None or want == self._mesh:
            return
        self._mesh = None
        applied = await self.plane.set_mesh(host.sandbox_path(INGRESS_SANDBOX), want)
        self._mesh = want
        if applied.unreserved:
            log.warning("published ports in use on this node: %s", ", ".join(applied.unreserved))

    async def _sync_sandboxes(self, host: OverlayHost, ingress: NetworkView | None,
                              records: dict[str, SandboxRecord]) -> list[str]:
        """Every task's VIPs and side of the mesh, the namespaces at once: a change that deletes
        anything (a backend or a node gone from a map) waits out an RCU grace period in each
        namespace's commit (~16 ms here), and the waits overlap instead of adding up. Every
        namespace is tried; what failed is returned. A sandbox removed meanwhile is no failure."""
        by_id = {t.id: s.id for s in ingress.services for t in s.tasks} if ingress is not None else {}
        bound = asyncio.Semaphore(SANDBOXES_AT_ONCE)

        async def one(key: str, record: SandboxRecord) -> None:
            async with bound:
                await self._set_vips(host, key, record)
                if ingress is not None and (place := self._place(key, record, ingress, by_id.get(key, ""))):
                    await self._set_task(host, key, ingress, place)

        keys = [key for key in records if not is_balancer(key)]
        results = await asyncio.gather(*(one(key, records[key]) for key in keys), return_exceptions=True)
        for gone in set(self._tasks) - set(records):
            self._tasks.pop(gone, None)
            self._places.pop(gone, None)
        for gone in set(self._vips) - set(records):
            self._vips.pop(gone, None)
        for gone in set(self._vip_locks) - set(records):
            if not self._vip_locks[gone].locked():      # nothing waits on an unheld lock
                del self._vip_locks[gone]
        failed = [(key, r) for key, r in zip(keys, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            still = await host.sandboxes()
            failed = [(key, r) for key, r in failed if key in still]
        for _, r in failed:
            if not isinstance(r, Exception):
                raise r
        return [f"sandbox {key}: {r}" for key, r in failed]

    def _wanted_vips(self, record: SandboxRecord) -> TaskVips:
        """The VIPs of every network the sandbox is on, as the LBs of this node balance them."""
        return TaskVips(tuple(s for a in record.attachments if (lb := self._vips_wanted.get(a.network_id))
                              for s in lb.services))

    async def _set_vips(self, host: OverlayHost, key: str, record: SandboxRecord) -> None:
        """The sandbox's own VIP table. What it should hold is taken once this step has its
        turn, so of two steps for one sandbox, the later one leaves the newer wanted state."""
        lock = self._vip_locks.setdefault(key, asyncio.Lock())
        async with lock:
            want = self._wanted_vips(record)
            if self._vips.get(key) == want:
                return
            self._vips.pop(key, None)
            await self.plane.set_vips(key, host.sandbox_path(key), want)
            self._vips[key] = want

    def _place(self, key: str, record: SandboxRecord, view: NetworkView, service_id: str) -> _TaskPlace | None:
        known = self._places.get(key)
        if known is not None:
            return known
        attachment = next((a for a in record.attachments if a.network_id == view.id), None)
        if attachment is None or not service_id:
            return None
        place = self._places[key] = _TaskPlace(service_id, attachment.ifname, attachment.address.ip)
        return place

    async def _set_task(self, host: OverlayHost, key: str, view: NetworkView, place: _TaskPlace) -> None:
        want = wanted_task(view, place.service_id, place.device, place.address)
        if self._tasks.get(key) == want:
            return
        self._tasks.pop(key, None)
        await self.plane.set_task(key, host.sandbox_path(key), want)
        self._tasks[key] = want

    async def task_sandbox(self, host: OverlayHost, task_id: str, service_id: str, ingress: NetworkView | None,
                           record: SandboxRecord) -> None:
        """A new task's VIPs and (on ingress) its side of the mesh, before its container starts."""
        if self._wanted_vips(record).services:
            await self._set_vips(host, task_id, record)
        self._places.pop(task_id, None)
        if ingress is not None and (place := self._place(task_id, record, ingress, service_id)):
            await self._set_task(host, task_id, ingress, place)

    async def forget_task(self, task_id: str, host: OverlayHost | None) -> None:
        """The task's sandbox is gone (and its tables with it); so are its host ports."""
        self._tasks.pop(task_id, None)
        self._places.pop(task_id, None)
        self._vips.pop(task_id, None)
        self._vip_locks.pop(task_id, None)
        self.plane.forget_sandbox(task_id)
        if task_id in self._host_ports and host is not None:
            await self._write_host_ports(host, {k: v for k, v in self._host_ports.items() if k != task_id})

    # ---- host-mode ports ----------------------------------------------------------------------
    async def task_host_ports(self, host: OverlayHost, task: Task, record: SandboxRecord) -> None:
        """Before the task's container starts: its host-mode ports lead to its gateway address."""
        ports = task_host_ports(task, record.gateway.ip) if record.gateway is not None else ()
        if self._host_ports.get(task.id, ()) != ports:
            wanted = {k: v for k, v in self._host_ports.items() if k != task.id}
            if ports:
                wanted[task.id] = ports
            await self._write_host_ports(host, wanted)

    async def _write_host_ports(self, host: OverlayHost, wanted: dict[str, tuple[HostPort, ...]]) -> None:
        applied = await self.plane.set_host_ports([p for ports in wanted.values() for p in ports],
                                                  host.gateway_bridge)
        self._host_ports = wanted
        write_atomic(self._host_ports_file, json.dumps(
            {k: [[p.protocol, p.port, str(p.address), p.target] for p in v] for k, v in wanted.items()}).encode())
        if applied.unreserved:
            log.warning("host-mode ports in use on this node: %s", ", ".join(applied.unreserved))

    def _load_host_ports(self) -> dict[str, tuple[HostPort, ...]]:
        try:
            saved = json.loads(self._host_ports_file.read_text())
            return {str(k): tuple(HostPort(str(p), int(n), IPv4Address(a), int(t)) for p, n, a, t in v)
                    for k, v in saved.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            log.warning("ignoring %s: %s", self._host_ports_file, exc)
            return {}

    async def retain_host_ports(self, host: OverlayHost, task_ids: set[str]) -> None:
        """After a restart: keep the host ports of the tasks this node still has, and reserve them."""
        await self._write_host_ports(host, {k: v for k, v in self._host_ports.items() if k in task_ids})

    async def purge(self) -> None:
        """The node left its swarm: the daemon's table and port reservations go (the sandboxes
        go with the overlay host's purge)."""
        self._lb.clear()
        self._tasks.clear()
        self._places.clear()
        self._vips_wanted.clear()
        self._vips.clear()
        self._vip_locks.clear()
        self._mesh = None
        await self.plane.remove_mesh(None)
        if self._host_ports or self._host_ports_file.exists():
            await self.plane.set_host_ports((), "lo")
            self._host_ports = {}
            self._host_ports_file.unlink(missing_ok=True)

    async def close(self) -> None:
        await self.plane.close()
