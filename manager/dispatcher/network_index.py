"""What each node's data path and embedded DNS need to know of the overlay networks: an index
kept from store events, and the per-node views built from it. Pure: no asyncio, no I/O
(network_push.py feeds it and sends what it builds).

Theory of operation: `load(tx)` takes everything from one snapshot; `apply(event)` then replaces
what the changed object contributes, and records in `dirty` exactly what changed for whom:
- a task contributes while it is on a node and not observed past RUNNING (so the data path
  stays while its container stops): per network it is attached to, one peer (its address, on
  its node) and one entry under its service for DNS, which is in rotation only while the task
  is observed RUNNING with desired state up to RUNNING (a task being stopped leaves DNS at once);
  it also makes its node a user of the network. A task without NetworksAttachments contributes
  nothing and costs one attribute read (`concerns_networks` keeps it out of the feed altogether);
- a node contributes its data-path address (Status.Addr: the VTEP of all its peers) and its own
  endpoint on each network (Node.attachments), a peer for the other nodes;
- a network contributes its metadata (VNI, subnet, gateway, MTU, flags) once allocated;
- a service contributes its name, endpoint mode, network aliases, its virtual IP on each network
  (`Endpoint.VirtualIPs`, vip mode) and its published ingress-mode ports (`Endpoint.Ports`, with
  the port the allocator chose for one asked as 0); the cluster the data-path port.

Each service entry of a view (network_push.py has the whole wire shape) is
  {"name", "id", "mode": "vip" | "dnsrr", "vip": "10.0.1.2" (its VIP on this network; "" in dnsrr
   mode or until allocated), "aliases": [...],
   "ports": [{"protocol": "tcp", "published": 8080, "target": 80}, ...] (its ingress-mode published
   ports, allocated; the same on every network it is on), "tasks": [...]};
"vip" and "ports" are what the VIP load balancer and the routing mesh program; DNS answers the
service name with "vip" in vip mode, with the tasks' addresses in dnsrr mode.

A node needs the networks its live tasks use, plus ingress. Its view of a network
(`view(network, node)`) is the metadata, its own address on it, the peers on every other node,
and the DNS entries. What changed is recorded for routing (`Dirty`): metadata or DNS of a
network (every node using it), the peers of one node on a network (every other node using it),
a node's own address (that node only), and the nodes whose set of networks may have changed.
Nothing is recorded for a write that changes no contribution, so a view is sent again only when
it changed. The shared parts of a view (the DNS list, each node's peer list) are built once
after a change and shared by every node's view until the next one: treat views as read-only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from manager.allocator import VXLAN_ID_LIST, find_ingress, is_ingress
from manager.dispatcher.attachments import ATTACHMENT_SPEC
from manager.store import Event, ReadTx
from model import Network, Node, Service, Task, TaskState
from model.endpoint import endpoint_mac

log = logging.getLogger("shoal.dispatcher")

NETWORK_TABLES = ("tasks", "nodes", "networks", "services", "clusters")
MTU_OPTION = "com.docker.network.driver.mtu"
DEFAULT_MTU = 1450           # 1500 less the VXLAN overhead
VXLAN_OVERHEAD = 50
DEFAULT_DATA_PATH_PORT = 4789
ENDPOINT = ""                # a node's own endpoint among its peers on a network (task IDs are never "")
HOSTNAME_ID_LENGTH = 12      # a container's short ID, its default hostname

_RUNNING = TaskState.RUNNING

Json = dict[str, Any]
DnsRecord = tuple[str, str, str, tuple[str, ...]]          # (task name, hostname, address, aliases)
TaskItem = tuple[str, str, DnsRecord | None]               # (network ID, address, DNS record if in rotation)
Contribution = tuple[str, str, str, tuple[TaskItem, ...]]  # (node ID, service ID, service name, items)
PublishedPort = tuple[str, int, int]                       # (protocol, published, target)
# (name, mode, ((target, aliases), ...), ((network ID, VIP), ...), published ingress ports)
ServiceInfo = tuple[str, str, tuple[tuple[str, tuple[str, ...]], ...], tuple[tuple[str, str], ...],
                    tuple[PublishedPort, ...]]


def concerns_networks(event: Event) -> bool:
    """Does the index care about `event`? Every event but those of tasks that have no network
    attachments before or after: O(1)."""
    if event.table != "tasks":
        return True
    return bool(event.obj.networks_attachments) or (event.old is not None and bool(event.old.networks_attachments))




def _ipv4(text: str) -> str:
    """The IPv4 address of "10.0.1.5/24" ("" for anything else)."""
    address = text.split("/", 1)[0]
    parts = address.split(".")
    if len(parts) != 4 or not all(part.isdigit() and len(part) <= 3 and int(part) < 256 for part in parts):
        return ""
    return address


def network_meta(network: Network) -> Json | None:
    """The node-independent head of a network's view; None while it cannot be programmed
    (not allocated, no VNI or no IPv4 subnet)."""
    if not network.allocated:
        return None
    options = network.driver_state.get("Options") or {}
    try:
        vni = int(str(options.get(VXLAN_ID_LIST, "")).split(",")[0])
    except ValueError:
        return None
    config = next((c for c in (network.ipam or {}).get("Configs") or [] if "." in str(c.get("Subnet") or "")), None)
    if config is None:
        return None
    spec = network.spec
    mtu = DEFAULT_MTU
    asked = options.get(MTU_OPTION, (spec.get("Options") or {}).get(MTU_OPTION))
    if asked is not None:
        try:
            mtu = int(asked) - VXLAN_OVERHEAD
        except (TypeError, ValueError):
            mtu = DEFAULT_MTU
        if mtu <= 0:
            mtu = DEFAULT_MTU
    return {"id": network.id, "name": network.name, "vni": vni, "subnet": str(config["Subnet"]),
            "gateway": str(config.get("Gateway") or ""), "mtu": mtu, "internal": bool(spec.get("Internal")),
            "ingress": is_ingress(network), "attachable": bool(spec.get("Attachable"))}


def _aliases_for(refs: Any, network_id: str, network_name: str) -> tuple[str, ...]:
    """The aliases of the attachment config (TaskTemplate.Networks entry) naming the network."""
    for ref in refs or ():
        target = str(ref.get("Target") or "") if isinstance(ref, dict) else ""
        if target and target in (network_id, network_name):
            return tuple(str(alias) for alias in ref.get("Aliases") or ())
    return ()


def task_contribution(task: Task) -> Contribution | None:
    """What `task` contributes to the networks it is attached to (None: nothing)."""
    attachments = task.networks_attachments
    if not attachments or not task.node_id or task.status.state > _RUNNING:
        return None
    rotation = task.status.state is _RUNNING and task.desired_state <= _RUNNING
    items: list[TaskItem] = []
    seen: set[str] = set()
    for attachment in attachments:
        if not isinstance(attachment, dict):
            continue
        network = attachment.get("Network") or {}
        network_id = str(network.get("ID") or "")
        address = next((ip for text in attachment.get("Addresses") or () if (ip := _ipv4(str(text)))), "")
        if not network_id or not address or network_id in seen:
            continue
        seen.add(network_id)
        dns: DnsRecord | None = None
        if rotation:
            spec = task.spec
            hostname = str((spec.get("ContainerSpec") or {}).get("Hostname") or "") or task.id[:HOSTNAME_ID_LENGTH]
            name = str((network.get("Spec") or {}).get("Name") or "")
            shown = task.display_name
            container = spec.get(ATTACHMENT_SPEC)
            if isinstance(container, dict):     # a standalone container: named as itself
                cid = str(container.get("ContainerID") or "")
                shown, hostname = str(container.get("ContainerName") or cid), cid[:HOSTNAME_ID_LENGTH] or hostname
            dns = (shown, hostname, address, _aliases_for(spec.get("Networks"), network_id, name))
        items.append((network_id, address, dns))
    if not items:
        return None
    return task.node_id, task.service_id, task.service_name, tuple(items)


def service_info(service: Service) -> ServiceInfo:
    spec = service.spec
    mode = "dnsrr" if str((spec.get("EndpointSpec") or {}).get("Mode") or "").lower() == "dnsrr" else "vip"
    refs = (spec.get("TaskTemplate") or {}).get("Networks") or spec.get("Networks") or []
    networks = tuple((str((ref or {}).get("Target") or ""), tuple(str(a) for a in (ref or {}).get("Aliases") or ()))
                     for ref in refs)
    endpoint = service.endpoint or {}
    vips: tuple[tuple[str, str], ...] = ()
    if mode == "vip":
        vips = tuple((str(v.get("NetworkID") or ""), address) for v in endpoint.get("VirtualIPs") or ()
                     if isinstance(v, dict) and (address := _ipv4(str(v.get("Addr") or ""))))
    ports = tuple((str(p.get("Protocol") or "tcp").lower(), int(p.get("PublishedPort") or 0),
                   int(p.get("TargetPort") or 0)) for p in endpoint.get("Ports") or ()
                  if isinstance(p, dict) and str(p.get("PublishMode") or "ingress").lower() == "ingress"
                  and p.get("PublishedPort"))
    return service.name, mode, networks, vips, ports


def node_endpoints(node: Node) -> dict[str, str]:
    """Network ID -> the node's own address on it ("10.0.1.3/24"), from Node.attachments."""
    out: dict[str, str] = {}
    for attachment in node.attachments:
        if not isinstance(attachment, dict):
            continue
        network_id = str((attachment.get("Network") or {}).get("ID") or "")
        address = next((str(text) for text in attachment.get("Addresses") or () if _ipv4(str(text))), "")
        if network_id and address and network_id not in out:
            out[network_id] = address
    return out


@dataclass
class Dirty:
    """What changed since the last `NetworkIndex.take_dirty()`, for routing."""

    views: set[str] = field(default_factory=set)              # metadata or DNS: every node using it
    peers: dict[str, set[str]] = field(default_factory=dict)  # network -> nodes whose endpoints on it changed
    own: dict[str, set[str]] = field(default_factory=dict)    # node -> networks where its own address changed
    nodes: set[str] = field(default_factory=set)              # nodes whose set of networks may have changed
    all_nodes: bool = False                                   # every node's set may have changed (ingress)
    data_path_port: bool = False                              # the cluster's data-path port changed

    def __bool__(self) -> bool:
        return bool(self.views or self.peers or self.own or self.nodes or self.all_nodes or self.data_path_port)


class _Net:
    """One network's contributions, and the shared parts of its views built from them."""

    __slots__ = ("all_peers", "dns_view", "meta", "peer_spans", "peer_views", "peers", "services", "users")

    def __init__(self) -> None:
        self.meta: Json | None = None
        self.peers: dict[str, dict[str, str]] = {}     # node -> (task ID | ENDPOINT) -> address
        self.services: dict[str, dict[str, tuple[str, DnsRecord | None]]] = {}  # service -> task -> (name, DNS)
        self.users: dict[str, int] = {}                # node -> its live tasks on the network
        self.dns_view: list[Json] | None = None        # built once after a change, shared
        self.peer_views: dict[str, list[Json]] = {}    # node -> its peers as sent, built once after a change
        self.all_peers: list[Json] | None = None       # every node's peers, node after node, shared
        self.peer_spans: dict[str, tuple[int, int]] = {}  # node -> where its peers are in all_peers

    def empty(self) -> bool:
        return self.meta is None and not self.peers and not self.services and not self.users


class NetworkIndex:
    def __init__(self) -> None:
        self.networks: dict[str, Network] = {}
        self.nets: dict[str, _Net] = {}
        self.tasks: dict[str, Contribution] = {}
        self.node_addr: dict[str, str] = {}               # node -> data-path address (VTEP)
        self.endpoints: dict[str, dict[str, str]] = {}    # node -> network -> its own "ip/prefix"
        self.node_nets: dict[str, dict[str, int]] = {}    # node -> network -> its live tasks on it
        self.services: dict[str, ServiceInfo] = {}
        self.service_nets: dict[str, dict[str, int]] = {}  # service -> network -> its entries on it
        self.ingress_id = ""
        self.data_path_port = DEFAULT_DATA_PATH_PORT
        self.dirty = Dirty()
        self.events = 0          # events applied (tasks without networks never get here)
        self.views_built = 0     # per-node views built
        self.shared_built = 0    # shared parts (DNS lists, peer lists) built

    # ---- feeding ------------------------------------------------------------------------------
    def load(self, tx: ReadTx) -> None:
        """Everything from one snapshot (the index must be fresh)."""
        for table in ("clusters", "networks", "nodes", "services"):
            for obj in tx.all(table)[:1] if table == "clusters" else tx.all(table):
                self._record(table, obj, False)
        for task in tx.all("tasks"):
            if task.networks_attachments:
                self._record("tasks", task, False)
        self.dirty = Dirty()

    def apply(self, event: Event) -> None:
        self.events += 1
        self._record(event.table, event.obj, event.op == "delete")

    def _record(self, table: str, obj: Any, gone: bool) -> None:
        """Replace what `obj` contributes. A malformed object is logged and left out: it must
        not end the dispatcher's term, nor make every resync fail."""
        try:
            if table == "tasks":
                self._task(obj.id, None if gone else task_contribution(obj))
            elif table == "nodes":
                self._node(obj.id, None if gone else obj)
            elif table == "networks":
                self._network(obj.id, None if gone else obj)
            elif table == "services":
                self._service(obj.id, None if gone else obj)
            elif table == "clusters":
                self._cluster(None if gone else obj)
        except Exception:
            log.exception("network index: %s %s left out", table, getattr(obj, "id", "?"))

    def take_dirty(self) -> Dirty:
        dirty = self.dirty
        if dirty:
            self.dirty = Dirty()
        return dirty

    # ---- what a node gets ---------------------------------------------------------------------
    def needed(self, node_id: str) -> set[str]:
        """The networks `node_id` needs now and that can be programmed (allocated)."""
        out = {network_id for network_id in self.node_nets.get(node_id, ())
               if (net := self.nets.get(network_id)) is not None and net.meta is not None}
        if self.ingress_id and (net := self.nets.get(self.ingress_id)) is not None and net.meta is not None:
            out.add(self.ingress_id)
        return out

    def users(self, network_id: str) -> dict[str, int] | None:
        """The nodes using a network (None: every node, for ingress)."""
        if network_id == self.ingress_id:
            return None
        net = self.nets.get(network_id)
        return net.users if net is not None else {}

    def view(self, network_id: str, node_id: str) -> Json:
        """`node_id`'s view of a network it needs (see the wire shape in network_push.py)."""
        net = self.nets[network_id]
        assert net.meta is not None
        self.views_built += 1
        return {**net.meta, "node_address": self.endpoints.get(node_id, {}).get(network_id, ""),
                "peers": self._peers_for(net, node_id), "services": self._dns(network_id, net)}

    def _peers_for(self, net: _Net, node_id: str) -> list[Json]:
        """The peers on every node but `node_id`: two slices of the shared list (the whole list,
        shared, for a node with no endpoint on the network)."""
        if net.all_peers is None:
            self.shared_built += 1
            all_peers: list[Json] = []
            spans: dict[str, tuple[int, int]] = {}
            for other, endpoints in net.peers.items():
                built = net.peer_views.get(other)
                if built is None:
                    vtep = self.node_addr.get(other, "")
                    own = endpoints.get(ENDPOINT)
                    built = net.peer_views[other] = [
                        {"ip": ip, "mac": endpoint_mac(ip), "vtep": vtep, **({"node": True} if ip == own else {})}
                        for ip in sorted(set(endpoints.values()))] if vtep else []
                spans[other] = (len(all_peers), len(all_peers) + len(built))
                all_peers.extend(built)
            net.all_peers, net.peer_spans = all_peers, spans
        span = net.peer_spans.get(node_id)
        if span is None:
            return net.all_peers
        return net.all_peers[:span[0]] + net.all_peers[span[1]:]

    def _dns(self, network_id: str, net: _Net) -> list[Json]:
        if net.dns_view is not None:
            return net.dns_view
        self.shared_built += 1
        name = net.meta["name"] if net.meta is not None else ""
        out = []
        for service_id, entries in net.services.items():
            info = self.services.get(service_id)
            service_name = info[0] if info is not None else next(iter(entries.values()))[0]
            aliases: tuple[str, ...] = ()
            vip = ""
            ports: list[Json] = []
            if info is not None:
                aliases = _aliases_for([{"Target": t, "Aliases": a} for t, a in info[2]], network_id, name)
                vip = next((address for target, address in info[3] if target == network_id), "")
                ports = [{"protocol": proto, "published": published, "target": target}
                         for proto, published, target in info[4]]
            records = sorted((dns, task_id) for task_id, (_, dns) in entries.items() if dns is not None)
            tasks: list[Json] = [{"name": dns[0], "id": task_id, "container_id": task_id, "hostname": dns[1],
                                  "address": dns[2], "aliases": list(dns[3])} for dns, task_id in records]
            out.append({"name": service_name, "id": service_id, "mode": info[1] if info is not None else "vip",
                        "vip": vip, "aliases": list(aliases), "ports": ports, "tasks": tasks})
        out.sort(key=lambda service: (service["name"], service["id"]))
        net.dns_view = out
        return out

    # ---- contributions --------------------------------------------------------------------------
    def _net(self, network_id: str) -> _Net:
        net = self.nets.get(network_id)
        if net is None:
            net = self.nets[network_id] = _Net()
        return net

    def _forget_if_empty(self, network_id: str) -> None:
        net = self.nets.get(network_id)
        if net is not None and net.empty() and network_id not in self.networks:
            del self.nets[network_id]

    def _peers_changed(self, network_id: str, net: _Net, node_id: str) -> None:
        net.peer_views.pop(node_id, None)
        net.all_peers = None
        self.dirty.peers.setdefault(network_id, set()).add(node_id)

    def _dns_changed(self, network_id: str, net: _Net) -> None:
        net.dns_view = None
        self.dirty.views.add(network_id)

    def _task(self, task_id: str, new: Contribution | None) -> None:
        old = self.tasks.get(task_id)
        if old == new:
            return
        if new is None:
            del self.tasks[task_id]
        else:
            self.tasks[task_id] = new
        old_items = {item[0]: item for item in old[3]} if old is not None else {}
        new_items = {item[0]: item for item in new[3]} if new is not None else {}
        same_place = old is not None and new is not None and old[:3] == new[:3]
        if old is not None:
            for network_id, item in old_items.items():
                if new is not None and same_place and network_id in new_items:
                    self._retune(network_id, new, task_id, item, new_items[network_id])
                else:
                    self._leave(network_id, old, task_id, item)
        if new is not None:
            for network_id, item in new_items.items():
                if not (same_place and network_id in old_items):
                    self._join(network_id, new, task_id, item)

    def _join(self, network_id: str, where: Contribution, task_id: str, item: TaskItem) -> None:
        node_id, service_id, service_name, _ = where
        net = self._net(network_id)
        net.peers.setdefault(node_id, {})[task_id] = item[1]
        self._peers_changed(network_id, net, node_id)
        users = net.users.get(node_id, 0)
        net.users[node_id] = users + 1
        counts = self.node_nets.setdefault(node_id, {})
        counts[network_id] = counts.get(network_id, 0) + 1
        if not users:
            self.dirty.nodes.add(node_id)
        entries = net.services.get(service_id)
        if entries is None:
            entries = net.services[service_id] = {}
            self._dns_changed(network_id, net)   # the service appears on the network
        elif item[2] is not None:
            self._dns_changed(network_id, net)
        entries[task_id] = (service_name, item[2])
        on = self.service_nets.setdefault(service_id, {})
        on[network_id] = on.get(network_id, 0) + 1

    def _leave(self, network_id: str, where: Contribution, task_id: str, item: TaskItem) -> None:
        node_id, service_id, _, _ = where
        net = self._net(network_id)
        endpoints = net.peers.get(node_id)
        if endpoints is not None:
            endpoints.pop(task_id, None)
            if not endpoints:
                del net.peers[node_id]
        self._peers_changed(network_id, net, node_id)
        users = net.users.get(node_id, 0) - 1
        if users > 0:
            net.users[node_id] = users
        else:
            net.users.pop(node_id, None)
            self.dirty.nodes.add(node_id)
        counts = self.node_nets.get(node_id, {})
        if counts.get(network_id, 0) > 1:
            counts[network_id] -= 1
        else:
            counts.pop(network_id, None)
            if not counts:
                self.node_nets.pop(node_id, None)
        entries = net.services.get(service_id, {})
        entries.pop(task_id, None)
        if not entries:
            net.services.pop(service_id, None)
            self._dns_changed(network_id, net)   # the service leaves the network
        elif item[2] is not None:
            self._dns_changed(network_id, net)
        on = self.service_nets.get(service_id, {})
        if on.get(network_id, 0) > 1:
            on[network_id] -= 1
        else:
            on.pop(network_id, None)
            if not on:
                self.service_nets.pop(service_id, None)
        self._forget_if_empty(network_id)

    def _retune(self, network_id: str, where: Contribution, task_id: str, old: TaskItem, new: TaskItem) -> None:
        """The same task on the same node and network: its address or DNS record changed."""
        node_id, service_id, service_name, _ = where
        net = self._net(network_id)
        if old[1] != new[1]:
            net.peers.setdefault(node_id, {})[task_id] = new[1]
            self._peers_changed(network_id, net, node_id)
        if old[2] != new[2]:
            net.services.setdefault(service_id, {})[task_id] = (service_name, new[2])
            self._dns_changed(network_id, net)

    def _node(self, node_id: str, node: Node | None) -> None:
        addr = str(node.status.get("Addr") or "") if node is not None else ""
        endpoints = node_endpoints(node) if node is not None else {}
        old_endpoints = self.endpoints.get(node_id, {})
        if addr != self.node_addr.get(node_id, ""):
            if addr:
                self.node_addr[node_id] = addr
            else:
                self.node_addr.pop(node_id, None)
            for network_id in {*self.node_nets.get(node_id, ()), *old_endpoints}:
                net = self.nets.get(network_id)
                if net is not None and node_id in net.peers:
                    self._peers_changed(network_id, net, node_id)
        if endpoints == old_endpoints:
            return
        for network_id in {*old_endpoints, *endpoints}:
            before, after = old_endpoints.get(network_id), endpoints.get(network_id)
            if before == after:
                continue
            net = self._net(network_id)
            if after is None:
                mine = net.peers.get(node_id, {})
                mine.pop(ENDPOINT, None)
                if not mine:
                    net.peers.pop(node_id, None)
            else:
                net.peers.setdefault(node_id, {})[ENDPOINT] = _ipv4(after)
            self._peers_changed(network_id, net, node_id)
            self.dirty.own.setdefault(node_id, set()).add(network_id)
            if after is None:
                self._forget_if_empty(network_id)
        if endpoints:
            self.endpoints[node_id] = endpoints
        else:
            self.endpoints.pop(node_id, None)

    def _network(self, network_id: str, network: Network | None) -> None:
        if network is None:
            self.networks.pop(network_id, None)
        else:
            self.networks[network_id] = network
        meta = network_meta(network) if network is not None else None
        net = self.nets.get(network_id)
        old = net.meta if net is not None else None
        if meta != old:
            net = self._net(network_id)
            net.meta = meta
            if old is None or meta is None:   # it can be programmed now, or no longer
                if network_id == self.ingress_id:
                    self.dirty.all_nodes = True
                self.dirty.nodes.update(net.users)
            else:
                self._dns_changed(network_id, net)   # (aliases may name the network by its name)
        ingress = find_ingress(self.networks.values())
        ingress_id = ingress.id if ingress is not None else ""
        if ingress_id != self.ingress_id:
            self.ingress_id = ingress_id
            self.dirty.all_nodes = True
        self._forget_if_empty(network_id)

    def _service(self, service_id: str, service: Service | None) -> None:
        info = service_info(service) if service is not None else None
        if info == self.services.get(service_id):
            return
        if info is None:
            del self.services[service_id]
        else:
            self.services[service_id] = info
        for network_id in self.service_nets.get(service_id, ()):
            self._dns_changed(network_id, self._net(network_id))

    def _cluster(self, cluster: Any) -> None:
        port = int(getattr(cluster, "data_path_port", 0) or DEFAULT_DATA_PATH_PORT) if cluster is not None \
            else DEFAULT_DATA_PATH_PORT
        if port != self.data_path_port:
            self.data_path_port = port
            self.dirty.data_path_port = True
