"""Pure planning: (what the kernel holds, what is wanted) → one nftables transaction and the few
netlink-side steps around it. Nothing here touches the kernel, files or clocks.

Five tables, each in the namespace it serves, each written only by its own plan (layout and
per-packet path in ingress/dataplane/__init__.py):

  <prefix>-lb       a network's LB namespace: VIP → per-service chain → numgen slot → backend
  <prefix>-vip      a task's own namespace: the same, as its connections leave (no SNAT)
  <prefix>-mesh     the ingress namespace: (proto . port) → per-port chain → slot → task:target
  <prefix>-publish  the daemon's namespace: local address, published (proto . port) → ingress ns
  <prefix>-task     a task on ingress: the per-task filter, and reply routing by connection mark

A plan is computed against a *layout*: what the kernel holds, as the last plan left it or as
read back from the kernel (readback.py) after a restart. A layout's `base` is None when the
fixed part of the table (base chains) is not known to match: the plan then rewrites the base
chains (a handful of rules, whatever the number of services) in the same transaction.

The size of a transaction is proportional to what changed: a new service is a map, a chain,
one rule, its elements and one verdict-map element; a backend more or less is one or two map
elements plus the one rule of its service (its modulus); nothing else is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Generic, TypeVar

from ingress.dataplane.slots import Slots, element_diff, reslot
from ingress.dataplane.spec import (
    ClientAddress,
    IngressBackend,
    IngressNode,
    LbNetwork,
    Mesh,
    TaskIngress,
    TaskVips,
)

DEFAULT_PREFIX = "shoal"
UDP_FLOW_TIMEOUT = "3m"  # a task's memory of a UDP flow from ingress (conntrack's own: 30 s, 120 s once answered)
RULE_PREF = 1000          # the `ip rule` priority of a task's reply-routing rules (before main at 32766)

K = TypeVar("K")


def table_names(prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    if not (1 <= len(prefix) <= 16 and prefix.isascii() and prefix.replace("-", "").isalnum()):
        raise ValueError(f"invalid table prefix {prefix!r}")
    return {kind: f"{prefix}-{kind}" for kind in ("lb", "vip", "mesh", "publish", "task")}


def vip_chain(vip: IPv4Address) -> str:
    return f"v-{int(vip):08x}"


def vip_map(vip: IPv4Address) -> str:
    return f"vb-{int(vip):08x}"


def port_chain(key: tuple[str, int]) -> str:
    return f"p-{key[0]}-{key[1]}"


def port_map(key: tuple[str, int]) -> str:
    return f"pb-{key[0]}-{key[1]}"


@dataclass(frozen=True)
class Flush:
    """Conntrack entries to delete once a backend is gone for good (`conntrack -D <args>`)."""

    args: tuple[str, ...]


@dataclass(frozen=True)
class Plan(Generic[K]):
    """One step for one namespace: `before_ip` (iproute2 batch lines, run first), `script` (one
    nft transaction; empty when nothing changes), then `after_ip`, then `flush`. `sysctls`
    (path under /proc/sys → value) go before everything, whenever the base is written."""

    script: str
    layout: K
    sysctls: tuple[tuple[str, str], ...] = ()
    before_ip: tuple[str, ...] = ()
    after_ip: tuple[str, ...] = ()
    flush: tuple[Flush, ...] = ()

    @property
    def commands(self) -> int:
        """nft commands in the transaction (one a line)."""
        return len(self.script.splitlines())

    @property
    def empty(self) -> bool:
        return not (self.script or self.before_ip or self.after_ip or self.flush or self.sysctls)


def _set(items: Sequence[str]) -> str:
    return "{ " + ", ".join(items) + " }"


class _Script:
    def __init__(self, family_table: str) -> None:
        self.t = family_table
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def map_elements(self, name: str, deletes: Sequence[str], adds: Sequence[str]) -> None:
        if deletes:
            self.add(f"delete element {self.t} {name} {_set(deletes)}")
        if adds:
            self.add(f"add element {self.t} {name} {_set(adds)}")


def _fresh(t: str) -> list[str]:
    """Lines that empty the table whatever it holds (create, then delete, in one transaction)."""
    return [f"table {t} {{}}", f"delete table {t}"]


B = TypeVar("B")


@dataclass(frozen=True)
class _Balancing(Generic[K, B]):
    """How one kind of balanced key (a VIP, a published port) is spelled in its table: a verdict
    map `vmap` from the key to its chain, whose one rule DNATs through a numgen map of backends."""

    vmap: str
    vmap_key: Callable[[K], str]
    map_name: Callable[[K], str]
    chain: Callable[[K], str]
    map_type: Callable[[K], str]         # what the numgen map holds, after `typeof numgen inc mod 1 :`
    rule_match: Callable[[K], str]       # before `dnat`, e.g. "meta l4proto tcp "
    element: Callable[[B], str]
    flush: Callable[[K, B], Flush]


def _balance(s: _Script, kind: _Balancing[K, B], held: Mapping[K, Slots[B]], before: Mapping[K, Slots[B]],
             wanted: Sequence[tuple[K, Sequence[B], Sequence[B]]], vmap: frozenset[K],
             ) -> tuple[dict[K, Slots[B]], list[Flush]]:
    """The lines taking every balanced key from `held` (what the table holds) to `wanted` (key,
    backends, draining); `before` is what was balanced (its gone backends' flows are flushed).
    Returns the new slots and the flushes."""
    t = s.t
    slots: dict[K, Slots[B]] = {}
    flush: list[Flush] = []
    for key, backends, draining in wanted:
        old = held.get(key)
        new = reslot(old, backends, draining)
        if old is None:
            s.add(f"add map {t} {kind.map_name(key)} {{ typeof numgen inc mod 1 : {kind.map_type(key)}; }}")
            s.add(f"add chain {t} {kind.chain(key)}")
        deletes, adds = element_diff(old, new)
        s.map_elements(kind.map_name(key), [str(k) for k in deletes], [f"{k} : {kind.element(b)}" for k, b in adds])
        if old is None or old.modulus != new.modulus:
            if old is not None:
                s.add(f"flush chain {t} {kind.chain(key)}")
            if new.modulus:
                s.add(f"add rule {t} {kind.chain(key)} {kind.rule_match(key)}"
                      f"dnat ip to numgen inc mod {new.modulus} map @{kind.map_name(key)}")
        slots[key] = new
        was = before.get(key)
        for gone in sorted((was.members if was else frozenset()) - new.members):  # type: ignore[type-var]
            flush.append(kind.flush(key, gone))
    keys = {key for key, _, _ in wanted}
    s.map_elements(kind.vmap, [kind.vmap_key(k) for k in sorted(vmap - keys)],  # type: ignore[type-var]
                   [f"{kind.vmap_key(k)} : goto {kind.chain(k)}" for k in sorted(keys - vmap)])  # type: ignore[type-var]
    for key in sorted(set(held) - keys):  # type: ignore[type-var]
        s.add(f"delete chain {t} {kind.chain(key)}")
        s.add(f"delete map {t} {kind.map_name(key)}")
    for key in sorted(set(before) - keys):  # type: ignore[type-var]
        for gone in sorted(before[key].members):  # type: ignore[type-var]
            flush.append(kind.flush(key, gone))
    return slots, flush


# ====================================================================== VIP load balancer


@dataclass(frozen=True)
class LbBase:
    address: IPv4Address
    device: str


@dataclass(frozen=True)
class LbLayout:
    """What the LB namespace holds: per VIP its backend map (and chain), the verdict-map
    elements, the /32 aliases on the device."""

    base: LbBase | None = None
    services: Mapping[IPv4Address, Slots[IPv4Address]] = field(default_factory=dict)
    vmap: frozenset[IPv4Address] = frozenset()
    aliases: frozenset[IPv4Address] = frozenset()
    exists: bool = False                     # the table exists (its base objects may not)


def _lb_base_lines(t: str, base: LbBase) -> list[str]:
    return [
        f"table {t} {{ map vips {{ type ipv4_addr : verdict; }}; "
        "chain pre { type nat hook prerouting priority dstnat; policy accept; }; "
        "chain post { type nat hook postrouting priority srcnat; policy accept; }; }",
        f"flush chain {t} pre",
        f"add rule {t} pre meta l4proto {{ tcp, udp, sctp }} ip daddr vmap @vips",
        f"flush chain {t} post",
        f"add rule {t} post ct status dnat snat ip to {base.address}",
    ]


def lb_sysctls(device: str) -> tuple[tuple[str, str], ...]:
    return (("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/send_redirects", "0"),       # VIP traffic hairpins out of its way in
            (f"net/ipv4/conf/{device}/send_redirects", "0"))


_VIPS: _Balancing[IPv4Address, IPv4Address] = _Balancing(
    vmap="vips", vmap_key=str, map_name=vip_map, chain=vip_chain, map_type=lambda vip: "ip daddr",
    rule_match=lambda vip: "", element=str, flush=lambda vip, gone: Flush(("-d", str(vip), "-r", str(gone))))


def plan_lb(current: LbLayout | None, want: LbNetwork, prefix: str = DEFAULT_PREFIX, *,
            fresh: bool = False) -> Plan[LbLayout]:
    """Take the LB namespace from `current` (None: nothing known, as if empty) to `want`.
    `fresh` rewrites the whole table (atomically), still flushing what `current` held."""
    t = f"ip {table_names(prefix)['lb']}"
    cur = current or LbLayout()
    base = LbBase(want.address, want.device)
    s = _Script(t)
    held = {} if fresh else dict(cur.services)
    vmap = frozenset() if fresh else cur.vmap
    sysctls: tuple[tuple[str, str], ...] = ()
    if fresh:
        for line in _fresh(t):
            s.add(line)
    if fresh or cur.base != base:
        for line in _lb_base_lines(t, base):
            s.add(line)
        sysctls = lb_sysctls(want.device)
    wanted = want.by_vip()
    before = current.services if current is not None else {}
    services, flush = _balance(s, _VIPS, held, before,
                               [(vip, svc.backends, svc.draining) for vip, svc in wanted.items()], vmap)
    aliases = frozenset(wanted)
    old_device = cur.base.device if cur.base is not None else want.device
    on_device = cur.aliases if old_device == want.device else frozenset()
    after = [f"address replace {v}/32 dev {want.device}" for v in sorted(aliases - on_device)]
    after += [f"address del {v}/32 dev {old_device}" for v in sorted(cur.aliases - on_device)]
    after += [f"address del {v}/32 dev {old_device}" for v in sorted(on_device - aliases)]
    layout = LbLayout(base, services, frozenset(wanted), aliases, exists=True)
    return Plan(s.text(), layout, sysctls, (), tuple(after), tuple(flush))


def lb_removal(current: LbLayout | None, device: str | None, prefix: str = DEFAULT_PREFIX) -> Plan[LbLayout]:
    """Delete the LB table and the VIP aliases, and cut every connection it balanced."""
    t = f"ip {table_names(prefix)['lb']}"
    cur = current or LbLayout()
    flush = [Flush(("-d", str(vip), "-r", str(b))) for vip, slots in sorted(cur.services.items())
             for b in sorted(slots.members)]
    after = [f"address del {v}/32 dev {device}" for v in sorted(cur.aliases)] if device else []
    return Plan("".join(line + "\n" for line in _fresh(t)), LbLayout(), (), (), tuple(after), tuple(flush))


# ====================================================================== VIPs in a task's namespace


@dataclass(frozen=True)
class VipLayout:
    """What a task's own VIP table holds. `based`: its fixed part is known to be as written."""

    based: bool = False
    services: Mapping[IPv4Address, Slots[IPv4Address]] = field(default_factory=dict)
    vmap: frozenset[IPv4Address] = frozenset()
    exists: bool = False


def _vip_base_lines(t: str) -> list[str]:
    return [
        f"table {t} {{ map vips {{ type ipv4_addr : verdict; }}; "
        "chain out { type nat hook output priority -100; policy accept; }; }",
        f"flush chain {t} out",
        # A TCP connection only from its SYN: one open before this table (through the LB
        # namespace, untracked here until now) is picked up mid-stream by conntrack as new, and
        # DNATing it to a backend that never saw it would reset it.
        f"add rule {t} out tcp flags & (syn | ack) == syn ip daddr vmap @vips",
        f"add rule {t} out meta l4proto {{ udp, sctp }} ip daddr vmap @vips",
    ]


# Without SNAT, one socket of the task may meet a backend on the wire with the same address and
# ports as an earlier one that reached it straight (a `tasks.` name, dnsrr): their timestamps
# came from different random offsets (one per address pair: the VIP's, the backend's), so the
# backend's TIME_WAIT takes the new SYN for an old segment, and the connection waits out a SYN
# retransmission (1 s). Timestamps without the random offset keep them increasing. Written
# where the table is first made (before the task's container starts), never over a later value.
VIP_SYSCTLS = (("net/ipv4/tcp_timestamps", "2"),)


def plan_vips(current: VipLayout | None, want: TaskVips, prefix: str = DEFAULT_PREFIX, *,
              fresh: bool = False) -> Plan[VipLayout]:
    """Take a task's namespace from `current` to `want`: the LB's maps and chains, reached from
    the output hook. Without SNAT the backend answers the task itself, whose conntrack un-DNATs
    the reply. A namespace with no table and no VIP wanted is left without one."""
    t = f"ip {table_names(prefix)['vip']}"
    cur = current or VipLayout()
    if not want.services and not cur.exists and not fresh:
        return Plan("", VipLayout())
    sysctls = VIP_SYSCTLS if not cur.exists else ()
    s = _Script(t)
    held = {} if fresh else dict(cur.services)
    vmap = frozenset() if fresh else cur.vmap
    if fresh:
        for line in _fresh(t):
            s.add(line)
    if fresh or not cur.based:
        for line in _vip_base_lines(t):
            s.add(line)
    wanted = want.by_vip()
    before = current.services if current is not None else {}
    services, flush = _balance(s, _VIPS, held, before,
                               [(vip, svc.backends, svc.draining) for vip, svc in wanted.items()], vmap)
    return Plan(s.text(), VipLayout(True, services, frozenset(wanted), exists=True), sysctls, flush=tuple(flush))


# ====================================================================== routing mesh: ingress namespace


@dataclass(frozen=True)
class MeshBase:
    ingress_address: IPv4Address
    client_address: ClientAddress


@dataclass(frozen=True)
class MeshLayout:
    base: MeshBase | None = None
    ports: Mapping[tuple[str, int], Slots[IngressBackend]] = field(default_factory=dict)
    vmap: frozenset[tuple[str, int]] = frozenset()
    exists: bool = False


def _mesh_base_lines(t: str, base: MeshBase) -> list[str]:
    lines = [
        f"table {t} {{ map ports {{ type inet_proto . inet_service : verdict; }}; "
        "chain pre { type nat hook prerouting priority dstnat; policy accept; }; "
        "chain post { type nat hook postrouting priority srcnat; policy accept; }; }",
        f"flush chain {t} pre",
        f"add rule {t} pre fib daddr type local meta l4proto . th dport vmap @ports",
        f"flush chain {t} post",
    ]
    if base.client_address is ClientAddress.SNAT:
        lines.append(f"add rule {t} post ct status dnat snat ip to {base.ingress_address}")
    return lines


MESH_SYSCTLS = (("net/ipv4/ip_forward", "1"),)


def _port_flush(key: tuple[str, int], gone: IngressBackend) -> Flush:
    proto, port = key
    return Flush(("-p", proto, "--orig-port-dst", str(port), "-r", str(gone.address),
                  "--reply-port-src", str(gone.port)))


_PORTS: _Balancing[tuple[str, int], IngressBackend] = _Balancing(
    vmap="ports", vmap_key=lambda key: f"{key[0]} . {key[1]}", map_name=port_map, chain=port_chain,
    map_type=lambda key: f"ip daddr . {key[0]} dport", rule_match=lambda key: f"meta l4proto {key[0]} ",
    element=lambda b: f"{b.address} . {b.port}", flush=_port_flush)


def plan_mesh(current: MeshLayout | None, want: Mesh, prefix: str = DEFAULT_PREFIX, *,
              fresh: bool = False) -> Plan[MeshLayout]:
    """Take the ingress namespace from `current` to `want`."""
    t = f"ip {table_names(prefix)['mesh']}"
    cur = current or MeshLayout()
    base = MeshBase(want.ingress_address, want.client_address)
    s = _Script(t)
    held = {} if fresh else dict(cur.ports)
    vmap = frozenset() if fresh else cur.vmap
    sysctls: tuple[tuple[str, str], ...] = ()
    if fresh:
        for line in _fresh(t):
            s.add(line)
    if fresh or cur.base != base:
        for line in _mesh_base_lines(t, base):
            s.add(line)
        sysctls = MESH_SYSCTLS
    wanted = want.by_key()
    before = current.ports if current is not None else {}
    ports, flush = _balance(s, _PORTS, held, before,
                            [(key, pp.backends, pp.draining) for key, pp in sorted(wanted.items())], vmap)
    layout = MeshLayout(base, ports, frozenset(wanted), exists=True)
    return Plan(s.text(), layout, sysctls, (), (), tuple(flush))


def mesh_removal(current: MeshLayout | None, prefix: str = DEFAULT_PREFIX) -> Plan[MeshLayout]:
    t = f"ip {table_names(prefix)['mesh']}"
    cur = current or MeshLayout()
    flush = [_port_flush(key, b) for key, slots in sorted(cur.ports.items()) for b in sorted(slots.members)]
    return Plan("".join(line + "\n" for line in _fresh(t)), MeshLayout(), (), (), (), tuple(flush))


# ====================================================================== routing mesh: daemon namespace


@dataclass(frozen=True)
class PublishBase:
    sandbox_address: IPv4Address
    host_device: str


@dataclass(frozen=True)
class PublishLayout:
    base: PublishBase | None = None
    ports: frozenset[tuple[str, int]] = frozenset()
    exists: bool = False


def _publish_base_lines(t: str, base: PublishBase) -> list[str]:
    dnat = f"fib daddr type local meta l4proto . th dport @ports dnat ip to {base.sandbox_address}"
    return [
        f"table {t} {{ set ports {{ type inet_proto . inet_service; }}; "
        "chain pre { type nat hook prerouting priority dstnat; policy accept; }; "
        "chain out { type nat hook output priority -100; policy accept; }; "
        "chain post { type nat hook postrouting priority srcnat; policy accept; }; }",
        f"flush chain {t} pre",
        f"add rule {t} pre {dnat}",
        f"flush chain {t} out",
        f"add rule {t} out {dnat}",
        f"flush chain {t} post",
        # Locally originated (localhost:P, or the node's own address): the ingress namespace
        # must answer to an address it can route to.
        f'add rule {t} post ct status dnat oifname "{base.host_device}" fib saddr type local masquerade',
    ]


def publish_sysctls(host_device: str) -> tuple[tuple[str, str], ...]:
    return (("net/ipv4/ip_forward", "1"),
            (f"net/ipv4/conf/{host_device}/route_localnet", "1"))   # 127.0.0.1 may leave towards it


def plan_publish(current: PublishLayout | None, want: Mesh, prefix: str = DEFAULT_PREFIX, *,
                 fresh: bool = False) -> Plan[PublishLayout]:
    """Take the daemon's namespace from `current` to `want` (only the published ports' set)."""
    t = f"ip {table_names(prefix)['publish']}"
    cur = current or PublishLayout()
    base = PublishBase(want.sandbox_address, want.host_device)
    s = _Script(t)
    held = frozenset() if fresh else cur.ports
    sysctls: tuple[tuple[str, str], ...] = ()
    if fresh:
        for line in _fresh(t):
            s.add(line)
    if fresh or cur.base != base:
        for line in _publish_base_lines(t, base):
            s.add(line)
        sysctls = publish_sysctls(want.host_device)
    wanted = frozenset(want.by_key())
    s.map_elements("ports", [f"{p} . {n}" for p, n in sorted(held - wanted)],
                   [f"{p} . {n}" for p, n in sorted(wanted - held)])
    return Plan(s.text(), PublishLayout(base, wanted, exists=True), sysctls)


def publish_removal(prefix: str = DEFAULT_PREFIX) -> Plan[PublishLayout]:
    t = f"ip {table_names(prefix)['publish']}"
    return Plan("".join(line + "\n" for line in _fresh(t)), PublishLayout())


# ====================================================================== a task on ingress


@dataclass(frozen=True)
class TaskBase:
    device: str
    address: IPv4Address


@dataclass(frozen=True)
class TaskLayout:
    base: TaskBase | None = None
    ports: frozenset[tuple[str, int]] = frozenset()
    nodes: Mapping[str, int] = field(default_factory=dict)     # MAC → mark
    rules: frozenset[int] = frozenset()                         # marks with an `ip rule` (pref RULE_PREF)
    routes: Mapping[int, IPv4Address] = field(default_factory=dict)   # table → default gateway
    exists: bool = False


def _task_base_lines(t: str, base: TaskBase) -> list[str]:
    dev, addr = base.device, base.address
    return [
        f"table {t} {{ set ports {{ type inet_proto . inet_service; }}; "
        "map nodes { type ether_addr : mark; }; "
        "set udpflows { type ipv4_addr . inet_service . inet_service; flags dynamic,timeout; "
        f"timeout {UDP_FLOW_TIMEOUT}; }}; "
        "chain pre { type filter hook prerouting priority mangle; policy accept; }; "
        "chain in { type filter hook input priority filter; policy accept; }; "
        "chain fixsrc { type filter hook output priority raw; policy accept; }; "
        "chain route { type route hook output priority mangle; policy accept; }; "
        "chain out { type filter hook output priority filter; policy accept; }; }",
        f"flush chain {t} pre",
        # The node a connection came in by, told by the source MAC of its first packet.
        f'add rule {t} pre iifname "{dev}" ct state new ct mark set ether saddr map @nodes',
        f"add rule {t} pre ct mark != 0 meta mark set ct mark",
        # A UDP server answering from an unbound socket gets its source address from the route
        # to the client (the default route, out of the gateway interface), before any mark can
        # steer it: give it back the ingress address, before conntrack, for the flows that came
        # in on ingress; conntrack then knows the reply, and its mark routes it.
        f'add rule {t} pre iifname "{dev}" ip daddr {addr} meta l4proto udp '
        "update @udpflows { ip saddr . udp sport . udp dport }",
        f"flush chain {t} fixsrc",
        f"add rule {t} fixsrc meta l4proto udp ip saddr != {addr} ip daddr . udp dport . udp sport @udpflows "
        f"ip saddr set {addr}",
        f"flush chain {t} route",
        f"add rule {t} route ct mark != 0 meta mark set ct mark",
        f"flush chain {t} in",
        f'add rule {t} in iifname "{dev}" ip daddr {addr} ct state established,related accept',
        f'add rule {t} in iifname "{dev}" ip daddr {addr} meta l4proto . th dport @ports accept',
        f'add rule {t} in iifname "{dev}" ip daddr {addr} meta l4proto {{ tcp, udp, sctp }} drop',
        f"flush chain {t} out",
        f'add rule {t} out ip saddr {addr} ct state established,related accept',
        f'add rule {t} out ip saddr {addr} meta l4proto {{ tcp, udp, sctp }} drop',
    ]


def task_sysctls(device: str) -> tuple[tuple[str, str], ...]:
    return (("net/ipv4/tcp_fwmark_accept", "1"),                  # an accepted socket keeps the mark
            (f"net/ipv4/conf/{device}/src_valid_mark", "1"))     # the source check routes by it too


def _node_routes(nodes: Sequence[IngressNode]) -> dict[int, IPv4Address]:
    return {n.mark: n.address for n in nodes}


def plan_task(current: TaskLayout | None, want: TaskIngress, prefix: str = DEFAULT_PREFIX, *,
              fresh: bool = False) -> Plan[TaskLayout]:
    """Take a task's namespace from `current` to `want`. Routes and rules for new nodes go in
    before the nft transaction that starts marking for them; those of nodes gone, after."""
    t = f"ip {table_names(prefix)['task']}"
    cur = current or TaskLayout()
    base = TaskBase(want.device, want.address)
    s = _Script(t)
    held_ports = frozenset() if fresh else cur.ports
    held_nodes = {} if fresh else dict(cur.nodes)
    sysctls: tuple[tuple[str, str], ...] = ()
    if fresh:
        for line in _fresh(t):
            s.add(line)
    if fresh or cur.base != base:
        for line in _task_base_lines(t, base):
            s.add(line)
        sysctls = task_sysctls(want.device)
    ports = frozenset(want.ports)
    s.map_elements("ports", [f"{p} . {n}" for p, n in sorted(held_ports - ports)],
                   [f"{p} . {n}" for p, n in sorted(ports - held_ports)])
    nodes = {n.mac: n.mark for n in want.nodes}
    s.map_elements("nodes", sorted(m for m in held_nodes if nodes.get(m) != held_nodes[m]),
                   [f"{m} : {k:#010x}" for m, k in sorted(nodes.items()) if held_nodes.get(m) != k])
    routes = _node_routes(want.nodes)
    before: list[str] = []
    for table, gateway in sorted(routes.items()):
        if cur.routes.get(table) != gateway:
            before.append(f"route replace default via {gateway} dev {want.device} table {table}")
    for table in sorted(set(routes) - cur.rules):
        before.append(f"rule add pref {RULE_PREF} fwmark {table:#x} lookup {table}")
    after: list[str] = []
    for table in sorted(cur.rules - set(routes)):
        after.append(f"rule del pref {RULE_PREF} fwmark {table:#x} lookup {table}")
    for table in sorted(set(cur.routes) - set(routes)):
        after.append(f"route flush table {table}")
    layout = TaskLayout(base, ports, nodes, frozenset(routes), routes, exists=True)
    return Plan(s.text(), layout, sysctls, tuple(before), tuple(after))


def task_removal(current: TaskLayout | None, prefix: str = DEFAULT_PREFIX) -> Plan[TaskLayout]:
    t = f"ip {table_names(prefix)['task']}"
    cur = current or TaskLayout()
    after = [f"rule del pref {RULE_PREF} fwmark {m:#x} lookup {m}" for m in sorted(cur.rules)]
    after += [f"route flush table {m}" for m in sorted(cur.routes)]
    return Plan("".join(line + "\n" for line in _fresh(t)), TaskLayout(), (), (), tuple(after))
