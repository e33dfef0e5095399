"""The node's task networking: the overlay data path (overlay/) and the embedded DNS (ingress/)
behind the worker's `TaskNetworking` contract (worker/networking.py).

Theory of operation: the agent hands over the newest `NetworkViews` (`sync`): the overlay
networks the node's tasks use are made to match them (namespace, bridge, VXLAN device, a
permanent neighbour and forwarding entry per remote endpoint), and every task's DNS server gets
the new records at once. `sandbox(task)` gives a task its network namespace with one interface
per attachment (and the gateway bridge unless all its networks are internal) and starts its
DNS server at 127.0.0.11; `release` undoes it after the container is gone. Where the VXLAN
port and tunnel address last were is kept in `<run_dir>/datapath.json`, so a restarted daemon
adopts what runs (namespaces, interfaces, peers) without cutting a task, and restarts each
sandbox's DNS server, before the first view arrives.

`local_networks()` is the read-only node-local view the Engine API shows (manager/api/
local_networks.py): per network pushed to this node (ingress always among them), the task
endpoints in this node's sandboxes, its own endpoint, the nodes with endpoints on it and the
services in rotation. Task names and the cluster object's labels, options and creation time are
remembered from the tasks this node sandboxed (a worker has no store to read them from).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from aio import cancel_and_wait
from ca.node_tls import write_atomic
from ingress.dataplane import IngressDataPlane
from ingress.dns import DnsServer, ForwardLimit, NetworkEntry, ServiceEntry, ServiceRecords, TaskEntry, resolv_conf
from ingress.dns.records import parse_address
from manager.api.local_networks import (
    VXLAN_ID_LIST,
    LocalEndpoint,
    LocalNetwork,
    LocalPeer,
    LocalService,
    LocalServiceTask,
)
from model import Task, format_time
from node.balancing import ServiceBalancing, is_balancer
from overlay import Attachment, OverlayError, OverlayHost, OverlaySpec, Peer, SandboxRecord
from worker.exec import TemporaryError
from worker.networking import NetworkView, NetworkViews, TaskSandbox

log = logging.getLogger("shoal.networking")

STATE_FILE = "datapath.json"
VIEW_WAIT = 5.0      # seconds a task's sandbox waits for the views of its networks to arrive


def overlay_spec(view: NetworkView) -> OverlaySpec:
    return OverlaySpec(network_id=view.id, vni=view.vni, subnet=IPv4Network(view.subnet),
                       gateway=IPv4Address(view.gateway), mtu=view.mtu, internal=view.internal)


def dns_records(views: Iterable[NetworkView]) -> ServiceRecords:
    return ServiceRecords.of(
        NetworkEntry(view.id, view.name, tuple(
            ServiceEntry(s.name, s.id, "dnsrr" if s.mode == "dnsrr" else "vip",
                         parse_address(s.vip) if s.vip else None, s.aliases, tuple(
                TaskEntry(t.name, t.id, t.container_id, parse_address(t.address), t.hostname, t.aliases)
                for t in s.tasks))
            for s in view.services))
        for view in views)


class NodeNetworking:
    def __init__(self, run_dir: Path, vtep: Callable[[], str], *, resolv_conf_path: str = "/etc/resolv.conf",
                 name_prefix: str = "shoal") -> None:
        self.run_dir = run_dir
        self._vtep = vtep                   # this node's data-path (advertise) address, "" outside a swarm
        self._resolv_conf_path = resolv_conf_path
        self._name_prefix = name_prefix
        self._host: OverlayHost | None = None
        self._balancing = ServiceBalancing(IngressDataPlane(prefix=name_prefix), run_dir)
        # what the last sync programmed on the current host: a message that changes neither the
        # set of networks nor a network's peers costs no netlink call
        self._programmed: tuple[OverlayHost, dict[str, OverlaySpec], dict[str, frozenset[Any]]] | None = None
        self._views: NetworkViews | None = None
        self._records = ServiceRecords()
        self._dns: dict[str, DnsServer] = {}        # task id -> its DNS server
        self._limit = ForwardLimit()                # one bound on forwarded queries for the node
        self._lock = asyncio.Lock()
        # VIPs and the mesh are programmed after the overlay and DNS, under a lock of their own:
        # a task's sandbox waits for the overlay it needs, not for the load balancers' nft runs
        self._balance_lock = asyncio.Lock()
        self._synced = asyncio.Event()              # replaced and set after every sync
        # for the node-local view (Engine API): remembered, never needed by the data path
        self._task_names: dict[str, str] = {}       # task id -> "web.1.<taskid>"
        self._cluster_networks: dict[str, dict[str, Any]] = {}   # network id -> swarm Network object
        self._first_seen: dict[str, str] = {}       # network id -> when this node first had it

    # ---- lifetime -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Adopt what an earlier daemon left running (live restore)."""
        try:
            saved = json.loads((self.run_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return
        async with self._lock:
            host = self._new_host(str(saved["vtep"]), int(saved["port"]))
            report = await host.adopt()
            log.info("adopted the data path", extra={"networks": len(report.networks),
                                                     "sandboxes": len(report.sandboxes),
                                                     "dropped": len(report.dropped)})
            for key, record in (await host.sandboxes()).items():
                networks = [a.network_id for a in record.attachments]
                if networks and not is_balancer(key):
                    await self._start_dns(key, host.sandbox_path(key), networks, external=record.gateway is not None)

    async def close(self) -> None:
        """Stop serving DNS; the data path stays up for the containers (live restore)."""
        async with self._balance_lock, self._lock:
            await self._close_dns(list(self._dns))
            await self._balancing.close()
            if self._host is not None:
                await self._host.close()
                self._host = None

    async def purge(self) -> None:
        """Remove every network, sandbox and rule this node made (the node left its swarm)."""
        async with self._balance_lock, self._lock:
            await self._close_dns(list(self._dns))
            if self._host is None and (self.run_dir / STATE_FILE).exists():
                saved = json.loads((self.run_dir / STATE_FILE).read_text())
                self._new_host(str(saved["vtep"]), int(saved["port"]))
            await self._balancing.purge()
            if self._host is not None:
                await self._host.purge()
                await self._host.close()
                self._host = None
            (self.run_dir / STATE_FILE).unlink(missing_ok=True)
            self._views, self._records = None, ServiceRecords()
            self._task_names.clear()
            self._cluster_networks.clear()
            self._first_seen.clear()

    def _new_host(self, vtep: str, port: int) -> OverlayHost:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._host = OverlayHost(IPv4Address(vtep), port, self.run_dir, self._name_prefix)
        write_atomic(self.run_dir / STATE_FILE, json.dumps({"vtep": vtep, "port": port}).encode())
        return self._host

    async def _host_for(self, port: int) -> OverlayHost:
        vtep = self._vtep()
        if not vtep:
            raise TemporaryError("this node has no data-path address yet")
        host = self._host
        if host is not None and host.port != port:    # another swarm: start from nothing
            await host.purge()
            await host.close()
            host = self._host = None
        if host is None:
            host = self._new_host(vtep, port)
            await host.adopt()
        elif str(host.local_vtep) != vtep:
            log.info("data-path address changed", extra={"from": str(host.local_vtep), "to": vtep})
            await host.set_local_vtep(IPv4Address(vtep))
            write_atomic(self.run_dir / STATE_FILE, json.dumps({"vtep": vtep, "port": port}).encode())
        return host

    # ---- TaskNetworking ----------------------------------------------------------------------
    async def sync(self, views: NetworkViews) -> None:
        # One set of views for the whole sync: the agent's object takes in new messages while
        # this awaits, and a network that arrived meanwhile would meet a data path reconciled
        # without it ("not set up"), or the balancing without its spec. The next sync has it.
        views = views.snapshot()
        async with self._lock:
            host = await self._host_for(views.data_path_port)
            self._views = views
            wanted = {view.id: overlay_spec(view) for view in views.views.values()}
            now = format_time(time.time())
            self._first_seen = {k: self._first_seen.get(k) or now for k in wanted}
            self._cluster_networks = {k: v for k, v in self._cluster_networks.items() if k in wanted}
            programmed, self._programmed = self._programmed, None     # unknown until this sync is done
            done_specs: dict[str, OverlaySpec] = {}
            done_peers: dict[str, frozenset[Any]] = {}
            if programmed is not None and programmed[0] is host:
                _, done_specs, done_peers = programmed
            if wanted != done_specs:
                if views.known:
                    await host.reconcile(wanted.values())
                else:
                    for spec in wanted.values():
                        await host.ensure_network(spec)
                done_peers = {}
            for view in views.views.values():
                if done_peers.get(view.id) != view.peers:
                    await host.set_peers(view.id, [Peer(IPv4Address(p.ip), p.mac, IPv4Address(p.vtep))
                                                   for p in view.peers])
            self._programmed = (host, wanted if views.known else {}, {v.id: v.peers for v in views.views.values()})
            self._records = dns_records(views.views.values())
            for server in self._dns.values():
                server.update(self._records)
            synced, self._synced = self._synced, asyncio.Event()
            synced.set()
        async with self._balance_lock:
            if self._host is host:           # not closed or purged meanwhile
                await self._balancing.sync(host, views, wanted)

    async def _task_networks(self, task: Task) -> tuple[NetworkViews, list[tuple[NetworkView, str]]]:
        """The views and the task's attachments, waiting (bounded) for the sync that brings a
        network the task needs: it is on its way with the task (the dispatcher sends a network
        before the tasks that use it), so waiting beats a retry's backoff."""
        try:
            async with asyncio.timeout(VIEW_WAIT):
                while True:
                    synced = self._synced
                    views = self._views
                    if views is not None:
                        with contextlib.suppress(KeyError):
                            return views, views.task_networks(task)
                    await synced.wait()
        except TimeoutError:
            what = "the node's networks are" if self._views is None else "a network of the task is"
            raise TemporaryError(f"{what} not known on this node yet") from None

    async def sandbox(self, task: Task) -> TaskSandbox:
        views, attached = await self._task_networks(task)
        async with self._lock:
            host = await self._host_for(views.data_path_port)
            path = await host.create_sandbox(task.id)      # (attach makes a network that is missing)
            # The DNS server needs only the namespace: it starts while the interfaces are made.
            # User networks resolve first, then ingress (Docker's order).
            order = [v.id for v, _ in attached if not v.ingress] + [v.id for v, _ in attached if v.ingress]
            external = not all(view.internal for view, _ in attached)
            dns = asyncio.ensure_future(self._start_dns(task.id, path, order, external)) \
                if attached and task.id not in self._dns else None
            try:
                await host.attach(task.id, [Attachment(overlay_spec(view), IPv4Interface(address))
                                            for view, address in attached])
            except BaseException:
                if dns is not None:
                    await asyncio.gather(dns, return_exceptions=True)   # registered: release closes it
                raise
            if dns is not None:
                await dns
            self._remember(task)
            record = (await host.sandboxes())[task.id]
            await self._balancing.task_host_ports(host, task, record)
            if not attached:
                return TaskSandbox(str(path), "")
            ingress = next((view for view, _ in attached if view.ingress), None)
            await self._balancing.task_sandbox(host, task.id, task.service_id, ingress, record)
            spec = task.spec.get("ContainerSpec") or {}
            hostname = str(spec.get("Hostname") or task.id[:12])
            first = IPv4Interface(attached[0][1]).ip
            return TaskSandbox(str(path), resolv_conf(self._host_resolv_conf()), (f"{first}\t{hostname}",))

    async def release(self, task_id: str) -> None:
        async with self._lock:
            self._task_names.pop(task_id, None)
            await self._balancing.forget_task(task_id, self._host)
            await self._close_dns([task_id], namespace_goes=True)
            if self._host is not None:
                await self._host.delete_sandbox(task_id)

    async def retain(self, task_ids: Iterable[str]) -> None:
        keep = set(task_ids)
        async with self._lock:
            if self._host is None:
                return
            for key in {k for k in await self._host.sandboxes() if not is_balancer(k)} - keep:
                log.info("removing the sandbox of a task this node no longer has", extra={"task": key})
                self._task_names.pop(key, None)
                await self._balancing.forget_task(key, self._host)
                await self._close_dns([key], namespace_goes=True)
                await self._host.delete_sandbox(key)
            await self._balancing.retain_host_ports(self._host, keep)

    # ---- DNS ----------------------------------------------------------------------------------
    async def _start_dns(self, key: str, path: Path, networks: list[str], external: bool) -> None:
        server = DnsServer(str(path), self._records, networks, resolv_conf_path=self._resolv_conf_path,
                           external_access=external, limit=self._limit)
        await server.start()
        self._dns[key] = server

    async def _close_dns(self, keys: list[str], namespace_goes: bool = False) -> None:
        """Stop these sandboxes' DNS servers; their rules stay in a namespace that is about to
        be deleted (removing them would cost a kernel grace period for nothing)."""
        servers = [self._dns.pop(k) for k in keys if k in self._dns]
        if servers:
            closing = [asyncio.ensure_future(s.close(remove_rules=not namespace_goes)) for s in servers]
            try:
                await asyncio.gather(*closing)
            except BaseException:
                await cancel_and_wait(closing)
                raise

    def _host_resolv_conf(self) -> str:
        try:
            return Path(self._resolv_conf_path).read_text()
        except OSError:
            return ""

    # ---- the node-local view (Engine API) ----------------------------------------------------
    def views(self) -> NetworkViews | None:
        return self._views

    def _remember(self, task: Task) -> None:
        self._task_names[task.id] = task.display_name
        for attachment in task.networks_attachments:
            network = attachment.get("Network") if isinstance(attachment, dict) else None
            if isinstance(network, dict) and network.get("ID"):
                self._cluster_networks[str(network["ID"])] = network

    async def _sandbox_records(self) -> dict[str, SandboxRecord]:
        host = self._host
        if host is None:
            return {}
        try:
            return await host.sandboxes()
        except OverlayError:        # closed under us (a leave, a shutdown): nothing to show
            return {}

    async def local_networks(self, own_name: str = "") -> list[LocalNetwork]:
        """The networks instantiated on this node as the Engine API shows them (read-only; no lock:
        a view in the middle of a sync is as good as the one before it). `own_name` names this
        node among the peers ("<hostname>-<node id[:12]>")."""
        views = self._views
        if views is None:
            return []
        records = await self._sandbox_records()
        now = format_time(time.time())
        own_vtep = str(self._host.local_vtep) if self._host is not None else self._vtep()
        names = {t.id: t.name for view in views.views.values() for s in view.services for t in s.tasks}
        out = []
        for view in sorted(views.views.values(), key=lambda v: v.name):
            endpoints = tuple(
                LocalEndpoint(key, self._task_names.get(key) or names.get(key) or key, str(att.address))
                for key, record in sorted(records.items()) if not is_balancer(key)
                for att in record.attachments if att.network_id == view.id)
            host_of = {p.ip: p.vtep for p in view.peers}
            host_of.update({ep.address.split("/")[0]: own_vtep for ep in endpoints})
            peers = {p.vtep: LocalPeer(p.vtep) for p in view.peers if p.vtep}
            if own_vtep:
                peers[own_vtep] = LocalPeer(own_vtep, own_name)
            services = tuple(LocalService(s.name, s.id, s.vip, tuple(
                LocalServiceTask(t.name, t.id, t.address, host_of.get(t.address, "")) for t in s.tasks))
                for s in view.services)
            cluster = self._cluster_networks.get(view.id) or {}
            spec = cluster.get("Spec") or {}
            options = {**((spec.get("DriverConfiguration") or {}).get("Options") or {}),
                       **((cluster.get("DriverState") or {}).get("Options") or {})}
            options.pop(VXLAN_ID_LIST, None)
            out.append(LocalNetwork(
                id=view.id, name=view.name, subnet=view.subnet, gateway=view.gateway, vni=view.vni,
                internal=view.internal, ingress=view.ingress, attachable=view.attachable,
                node_address=view.node_address, endpoints=endpoints, peers=tuple(peers.values()),
                services=services, created=str(cluster.get("CreatedAt") or self._first_seen.setdefault(view.id, now)),
                labels=dict(spec.get("Labels") or {}), options={str(k): str(v) for k, v in options.items()}))
        return out


class LocalNetworkSource:
    """What the daemon registers as the API's `LocalNetworks`: this node's networks, with the node
    itself among the peers named as Docker names it, `<hostname>-<node id[:12]>`."""

    def __init__(self, networking: NodeNetworking, hostname: str, node_id: Callable[[], str]) -> None:
        self._networking = networking
        self._hostname = hostname
        self._node_id = node_id

    async def local_networks(self) -> list[LocalNetwork]:
        node_id = self._node_id()
        return await self._networking.local_networks(f"{self._hostname}-{node_id[:12]}" if node_id else "")
