"""Pure planning for the overlay data path: names, MACs, the peer diff, gateway addresses.

Nothing here touches the kernel, files or clocks; host.py and kernel.py apply what these
functions decide. The peer diff is level-triggered: it compares what the kernel holds with
what is wanted and returns the smallest set of deletes and adds that make them equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from overlay.spec import Peer, check_name

IFNAMSIZ = 15                      # the kernel's limit on interface names (16 with the NUL)

# Device names inside a network's namespace: fixed, since each network has its own namespace.
BRIDGE = "br0"
VXLAN = "vxlan0"

MAX_PREFIX = 6                     # "<prefix>_gwbridge" must fit in IFNAMSIZ

# The link group (IFLA_GROUP) of the interfaces a sandbox gets: a detach deletes them all with
# one request, and the kernel unregisters them in one batch (one RCU grace period, not one each).
SANDBOX_LINK_GROUP = 0x5E0A


def check_prefix(prefix: str) -> str:
    if not (1 <= len(prefix) <= MAX_PREFIX and prefix.isascii() and prefix.isalnum() and prefix.islower()):
        raise ValueError(f"invalid name prefix {prefix!r}: want 1-{MAX_PREFIX} lowercase letters or digits")
    return prefix


def _ifname(name: str) -> str:
    assert len(name) <= IFNAMSIZ, name
    return name


def network_netns_name(network_id: str) -> str:
    """The file name, under <run_dir>/netns, of a network's namespace."""
    return "n-" + check_name("network id", network_id)


def sandbox_netns_name(key: str) -> str:
    """The file name, under <run_dir>/netns, of a sandbox's (a container's) namespace."""
    return "s-" + check_name("sandbox key", key)


def parse_netns_name(name: str) -> tuple[str, str] | None:
    """("network", id) or ("sandbox", key) for a file name made by the two functions above."""
    kind = {"n-": "network", "s-": "sandbox"}.get(name[:2])
    if kind is None or len(name) < 3:
        return None
    try:
        check_name(kind, name[2:])
    except ValueError:
        return None
    return kind, name[2:]




def container_ifname(index: int) -> str:
    return _ifname(f"eth{index}")


def overlay_veth_name(ip: IPv4Address) -> str:
    """The bridge-side end of an endpoint's veth in the network namespace (unique per address)."""
    return _ifname(f"ve{int(ip):08x}")


def gateway_bridge_name(prefix: str) -> str:
    return _ifname(f"{check_prefix(prefix)}_gwbridge")


def gateway_veth_name(prefix: str, ip: IPv4Address) -> str:
    """The host-side end of a sandbox's veth on the gateway bridge (unique per gateway address)."""
    return _ifname(f"{check_prefix(prefix)}g{int(ip):08x}")


def staging_vxlan_name(prefix: str, vni: int) -> str:
    """The name a VXLAN device has in the daemon's namespace, before it moves into its network's."""
    return _ifname(f"{check_prefix(prefix)}x{vni:06x}")


def is_staging_vxlan_name(prefix: str, name: str) -> bool:
    head = f"{prefix}x"
    tail = name[len(head):]
    return name.startswith(head) and len(tail) == 6 and all(c in "0123456789abcdef" for c in tail)


def nft_table_name(prefix: str) -> str:
    return f"{check_prefix(prefix)}-gw"


def vxlan_table_name(prefix: str) -> str:
    return f"{check_prefix(prefix)}-vxlan"


# ---------------------------------------------------------------- peers

Neigh = tuple[IPv4Address, str]         # (overlay ip, mac): a permanent ARP entry on the vxlan dev
Fdb = tuple[str, IPv4Address]           # (mac, vtep): a permanent forwarding entry on the vxlan dev


@dataclass(frozen=True)
class PeerEntries:
    """The neighbour and forwarding entries of one network's VXLAN device."""

    neigh: frozenset[Neigh] = frozenset()
    fdb: frozenset[Fdb] = frozenset()

    def peers(self) -> set[Peer]:
        """The peers these entries describe (an entry without its counterpart is left out)."""
        vtep_of = dict(self.fdb)
        return {Peer(ip, mac, vtep_of[mac]) for ip, mac in self.neigh if mac in vtep_of}


@dataclass(frozen=True)
class PeerPlan:
    """Apply in this order: deletes first, then adds (adds are replaces, so they are idempotent)."""

    neigh_del: tuple[Neigh, ...] = ()
    fdb_del: tuple[Fdb, ...] = ()
    neigh_add: tuple[Neigh, ...] = ()
    fdb_add: tuple[Fdb, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.neigh_del or self.fdb_del or self.neigh_add or self.fdb_add)


def wanted_entries(peers: Iterable[Peer], local_vtep: IPv4Address | None = None) -> PeerEntries:
    """The entries for a set of remote endpoints. Endpoints behind `local_vtep` are local (the
    bridge reaches them directly) and get none. Two peers claiming one address with different
    MACs, or one MAC behind two VTEPs, are a caller's bug and raise ValueError."""
    mac_of: dict[IPv4Address, str] = {}
    vtep_of: dict[str, IPv4Address] = {}
    for peer in peers:
        if local_vtep is not None and peer.vtep == local_vtep:
            continue
        if mac_of.setdefault(peer.ip, peer.mac) != peer.mac:
            raise ValueError(f"peer {peer.ip} given with two MACs: {mac_of[peer.ip]} and {peer.mac}")
        if vtep_of.setdefault(peer.mac, peer.vtep) != peer.vtep:
            raise ValueError(f"peer MAC {peer.mac} given behind two VTEPs: {vtep_of[peer.mac]} and {peer.vtep}")
    return PeerEntries(frozenset(mac_of.items()), frozenset(vtep_of.items()))


def plan_peers(current: PeerEntries, wanted: PeerEntries) -> PeerPlan:
    """The changes that turn `current` into `wanted`, sorted so the plan is deterministic.

    A neighbour is keyed by its IP: one whose MAC changed is re-added (replace), not deleted.
    A forwarding entry is keyed by (MAC, VTEP): a VXLAN FDB entry can hold several remote
    VTEPs, so a moved MAC loses its old destination and gains the new one.
    """
    wanted_mac = dict(wanted.neigh)
    neigh_del = sorted(entry for entry in current.neigh if entry[0] not in wanted_mac)
    neigh_add = sorted(wanted.neigh - current.neigh)
    fdb_del = sorted(current.fdb - wanted.fdb, key=_fdb_key)
    fdb_add = sorted(wanted.fdb - current.fdb, key=_fdb_key)
    return PeerPlan(tuple(neigh_del), tuple(fdb_del), tuple(neigh_add), tuple(fdb_add))


def _fdb_key(entry: Fdb) -> tuple[str, int]:
    return entry[0], int(entry[1])


# ---------------------------------------------------------------- gateway bridge

DEFAULT_GATEWAY_SUBNET = IPv4Network("172.18.0.0/16")    # Docker's usual docker_gwbridge subnet

@dataclass(frozen=True)
class GatewayPool:
    """The per-daemon gateway bridge subnet: .1 is the bridge, sandboxes get the rest."""

    subnet: IPv4Network
    reserved: frozenset[IPv4Address] = field(default=frozenset())

    def __post_init__(self) -> None:
        if self.subnet.prefixlen > 30:
            raise ValueError(f"gateway subnet {self.subnet} is too small")

    @property
    def gateway(self) -> IPv4Interface:
        return IPv4Interface(f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}")

    def allocate(self, used: Iterable[IPv4Address]) -> IPv4Interface:
        """The lowest free host address; ValueError once the subnet is exhausted."""
        taken = {*used, *self.reserved, self.gateway.ip}
        for ip in self.subnet.hosts():
            if ip not in taken:
                return IPv4Interface(f"{ip}/{self.subnet.prefixlen}")
        raise ValueError(f"gateway subnet {self.subnet} is exhausted")


def masquerade_ruleset(table: str, subnet: IPv4Network, bridge: str) -> str:
    """One `nft -f` transaction that (re)defines the gateway table: traffic from the gateway
    subnet leaving through any other interface is masqueraded. Declaring the table before
    deleting it makes the delete succeed whether or not it existed."""
    return (
        f"table ip {table} {{}}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {subnet} oifname != "{bridge}" masquerade\n'
        f"  }}\n"
        f"}}\n"
    )


def vxlan_untracked_ruleset(table: str, port: int) -> str:
    """One transaction that (re)defines the table keeping the VXLAN packets (UDP to `port`, both
    ways) out of conntrack in the daemon's namespace: each is a datagram between two VTEPs that
    nothing NATs or filters by state, and tracking it cost a lookup per packet and an entry (with
    the nat hooks' first-packet pass) per inner flow, whose hash picks the outer source port."""
    return (
        f"table ip {table} {{}}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n"
        f"  chain prerouting {{\n"
        f"    type filter hook prerouting priority raw; policy accept;\n"
        f"    udp dport {port} notrack\n"
        f"  }}\n"
        f"  chain output {{\n"
        f"    type filter hook output priority raw; policy accept;\n"
        f"    udp dport {port} notrack\n"
        f"  }}\n"
        f"}}\n"
    )


def delete_table_ruleset(table: str) -> str:
    return f"table ip {table} {{}}\ndelete table ip {table}\n"


# ---------------------------------------------------------------- the VXLAN device

@dataclass(frozen=True)
class VxlanParams:
    """What identifies a network's VXLAN device; a difference means re-creating it (the kernel
    cannot change a VXLAN device's id, port or local address in place)."""

    vni: int
    port: int
    local: IPv4Address | None
    learning: bool = False
    proxy: bool = True


def vxlan_needs_recreate(current: VxlanParams | None, wanted: VxlanParams) -> bool:
    return current != wanted
