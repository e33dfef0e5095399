"""Address arithmetic for swarm networks: subnets carved from pools, VXLAN ids, and serial
host addresses. Pure functions over plain values (no store, no clock).

Rules (Docker's, ../shared/networking.md §3):
- A network without a user subnet gets the first free `/size` block of the pools, in pool
  order; "free" means overlapping no other network's subnet.
- VXLAN ids come from [4096, 2^24-1]; see `next_vni` for the serial rule.
- Host addresses are handed out serially: the first free address after the last one handed
  out (the cursor), wrapping around, so a freed address is not reused until wrap-around. The
  network address, the broadcast address, the gateway and auxiliary addresses are never handed
  out; with an IP range, only addresses inside it are.

Error texts are Docker's (swarmkit controlapi `validateIPAMConfiguration`, libnetwork's
overlay manager) where it has one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

VXLAN_ID_LIST = "com.docker.network.driver.overlay.vxlanid_list"
VNI_FIRST = 4096  # outside the 802.1Q VLAN ids
VNI_LAST = (1 << 24) - 1
DEFAULT_IPAM_DRIVER = "default"


class IpamError(ValueError):
    """A network's IPAM request cannot be met; `message` is the user-facing text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class SubnetConfig:
    """One IPAM config of a network: its subnet, the range addresses come from, the gateway
    and the addresses never handed out."""

    subnet: IPNetwork
    gateway: IPAddress | None = None
    ip_range: IPNetwork | None = None
    aux: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> int:
        return self.subnet.prefixlen

    def first_last(self) -> tuple[int, int]:
        """The lowest and highest address that may be handed out."""
        net = self.ip_range or self.subnet
        first, last = int(net.network_address), int(net.broadcast_address)
        if self.subnet.prefixlen < self.subnet.max_prefixlen - 1:  # network and broadcast are not hosts
            first = max(first, int(self.subnet.network_address) + 1)
            last = min(last, int(self.subnet.broadcast_address) - 1)
        return first, last

    def reserved(self) -> set[int]:
        out = {int(ipaddress.ip_address(a)) for a in self.aux.values()}
        if self.gateway is not None:
            out.add(int(self.gateway))
        return out

    def to_record(self) -> dict[str, object]:
        out: dict[str, object] = {"Subnet": str(self.subnet)}
        if self.ip_range is not None:
            out["Range"] = str(self.ip_range)
        if self.gateway is not None:
            out["Gateway"] = str(self.gateway)
        if self.aux:
            out["AuxiliaryAddresses"] = dict(self.aux)
        return out

    @classmethod
    def from_record(cls, rec: dict) -> SubnetConfig:
        subnet = ipaddress.ip_network(rec["Subnet"], strict=False)
        return cls(subnet=subnet,
                   gateway=ipaddress.ip_address(rec["Gateway"]) if rec.get("Gateway") else None,
                   ip_range=ipaddress.ip_network(rec["Range"], strict=False) if rec.get("Range") else None,
                   aux=dict(rec.get("AuxiliaryAddresses") or {}))


# -- what the user asked for ---------------------------------------------------------------------
def parse_requested(ipam: dict | None) -> list[SubnetConfig]:
    """The user's IPAM configs (Engine API `IPAM.Config`), checked with swarmkit's texts.
    Gateways are left None when not given (the allocator picks the first address)."""
    out: list[SubnetConfig] = []
    for cfg in (ipam or {}).get("Config") or []:
        text = str(cfg.get("Subnet") or "")
        if not text:
            if cfg.get("IPRange") or cfg.get("Gateway"):
                raise IpamError(f"ipam configuration: invalid subnet {text}")
            continue
        try:
            subnet = ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise IpamError(f"ipam configuration: invalid subnet {text}") from None
        ip_range = None
        if cfg.get("IPRange"):
            try:
                ip_range = ipaddress.ip_network(str(cfg["IPRange"]), strict=False)
            except ValueError:
                raise IpamError(f"ipam configuration: invalid range {cfg['IPRange']}") from None
            if ip_range.version != subnet.version or not ip_range.subnet_of(subnet):  # type: ignore[arg-type]
                raise IpamError(f"ipam configuration: subnet {text} does not contain range {cfg['IPRange']}")
        gateway = None
        if cfg.get("Gateway"):
            try:
                gateway = ipaddress.ip_address(str(cfg["Gateway"]))
            except ValueError:
                raise IpamError(f"ipam configuration: invalid gateway {cfg['Gateway']}") from None
            if gateway not in subnet:
                raise IpamError(f"ipam configuration: subnet {text} does not contain gateway {cfg['Gateway']}")
        aux = {}
        for name, addr in (cfg.get("AuxiliaryAddresses") or {}).items():
            try:
                ip = ipaddress.ip_address(str(addr))
            except ValueError:
                raise IpamError(f"ipam configuration: invalid auxiliary address {name}={addr}") from None
            if ip not in subnet:
                raise IpamError(f"ipam configuration: subnet {text} does not contain auxiliary address "
                                f"{name}={addr}")
            aux[str(name)] = str(ip)
        out.append(SubnetConfig(subnet, gateway, ip_range, aux))
    for i, mine in enumerate(out):
        for other in out[:i]:
            if mine.subnet.version == other.subnet.version and mine.subnet.overlaps(other.subnet):
                raise IpamError(f"ipam configuration: subnet {mine.subnet} overlaps with {other.subnet}")
    return out


def check_ipam_driver(ipam: dict | None) -> None:
    name = (ipam or {}).get("Driver") or DEFAULT_IPAM_DRIVER
    if name != DEFAULT_IPAM_DRIVER:
        raise IpamError(f"plugin {name} not supported (swarm networks use the {DEFAULT_IPAM_DRIVER} IPAM driver)")


def parse_vni_list(options: dict | None) -> list[int]:
    """The pinned VXLAN ids of `--opt com.docker.network.driver.overlay.vxlanid_list=N[,M]`."""
    text = (options or {}).get(VXLAN_ID_LIST)
    if text is None:
        return []
    out = []
    for part in str(text).split(","):
        try:
            vni = int(part.strip(), 10)
        except ValueError:
            raise IpamError(f'invalid vxlan id value "{part}" passed') from None
        if not 1 <= vni <= VNI_LAST:
            raise IpamError(f'invalid vxlan id value "{part}" passed: vxlan ids are 1-{VNI_LAST}')
        out.append(vni)
    return out


# -- subnets from pools ------------------------------------------------------------------------------
def overlapping(subnet: IPNetwork, taken: Iterable[IPNetwork]) -> IPNetwork | None:
    for other in taken:
        if other.version == subnet.version and other.overlaps(subnet):
            return other
    return None


def next_pool_subnet(pools: list[str], size: int, taken: list[IPNetwork]) -> IPNetwork | None:
    """The first `/size` block of `pools` (in order) that overlaps nothing in `taken`."""
    for text in pools:
        pool = ipaddress.ip_network(text, strict=False)
        if size < pool.prefixlen or size > pool.max_prefixlen:
            continue
        step = 1 << (pool.max_prefixlen - size)
        start, end = int(pool.network_address), int(pool.broadcast_address)
        clashes = sorted((int(t.network_address), int(t.broadcast_address)) for t in taken
                         if t.version == pool.version and t.overlaps(pool))
        candidate = start
        while candidate + step - 1 <= end:
            block_end = candidate + step - 1
            clash = next((c for c in clashes if c[0] <= block_end and c[1] >= candidate), None)
            if clash is None:
                return type(pool)((candidate, size))
            candidate = ((clash[1] + 1 + step - 1) // step) * step  # the next aligned block after it
    return None


# -- VXLAN ids -------------------------------------------------------------------------------------
def next_vni(in_use: Container[int], after: int) -> int | None:
    """The first VXLAN id of [4096, 2^24-1] above `after` that is not in use, wrapping around to
    4096. Callers pass the highest id handed out automatically, so ids go out serially (ingress
    4096, then 4097, 4098, ...) and a freed id is not reused until wrap-around."""
    start = after + 1 if VNI_FIRST <= after < VNI_LAST else VNI_FIRST
    for vni in range(start, VNI_LAST + 1):
        if vni not in in_use:
            return vni
    for vni in range(VNI_FIRST, start):
        if vni not in in_use:
            return vni
    return None


# -- host addresses -----------------------------------------------------------------------------
def next_address(config: SubnetConfig, used: Container[int], cursor: str | None) -> IPAddress | None:
    """The first address after `cursor` (the last one handed out) that may be handed out and is
    not in `used`, wrapping around; None when the subnet (or its range) is full."""
    first, last = config.first_last()
    if first > last:
        return None
    reserved = config.reserved()
    start = first
    if cursor:
        try:
            at = int(ipaddress.ip_address(cursor))
        except ValueError:
            at = first - 1
        if first <= at < last:
            start = at + 1
    address = type(config.subnet.network_address)
    for number in range(start, last + 1):
        if number not in used and number not in reserved:
            return address(number)
    for number in range(first, start):
        if number not in used and number not in reserved:
            return address(number)
    return None


def parse_cidr_address(text: str) -> tuple[int, IPNetwork] | None:
    """"10.0.1.5/24" -> (the address as an int, its subnet); None if it is not one."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        return None
    return int(iface.ip), iface.network
