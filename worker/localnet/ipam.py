"""Address management of local (bridge) networks, as dockerd's default IPAM does it (pure).

Theory of operation: a network has one IPv4 pool: a subnet, optionally an IP range inside it
(where dynamic addresses come from), a gateway (default: the subnet's first host) and auxiliary
addresses (reserved, never handed out). Without a configured subnet the first of the default
pools (172.18.0.0/16 … 172.31.0.0/16, then 192.168.N.0/20) that overlaps no other local network
is taken. A fixed address (docker's --ip) must lie in the subnet and be free; a dynamic one is
the first free host of the range. An IPv6 network has, beside its IPv4 pool, one IPv6 pool given
in its config (`ipv6_pool`: subnet, optional range and gateway; there is no default IPv6 pool).
Errors carry dockerd's status and text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

DEFAULT_POOLS = ([IPv4Network(f"172.{n}.0.0/16") for n in range(18, 32)]
                 + [IPv4Network(f"192.168.{n}.0/20") for n in range(0, 256, 16)])


class IpamError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Pool:
    subnet: IPv4Network | IPv6Network
    gateway: IPv4Address | IPv6Address
    ip_range: IPv4Network | IPv6Network | None = None
    aux: dict[str, str] = field(default_factory=dict)

    def to_api(self, with_range: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"Subnet": str(self.subnet)}
        if with_range and self.ip_range is not None:
            out["IPRange"] = str(self.ip_range)
        out["Gateway"] = str(self.gateway)
        if self.aux:
            out["AuxiliaryAddresses"] = dict(self.aux)
        return out

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Pool:
        return cls(ip_network(data["Subnet"]), ip_address(data["Gateway"]),
                   ip_network(data["IPRange"]) if data.get("IPRange") else None,
                   dict(data.get("AuxiliaryAddresses") or {}))


def _network(text: Any, what: str) -> IPv4Network:
    if not isinstance(text, str) or not text:
        raise IpamError(400, f"invalid {what}: {text!r}")
    try:
        net = ip_network(text, strict=False)
    except ValueError:
        raise IpamError(400, f"invalid {what} {text}: not a CIDR") from None
    if not isinstance(net, IPv4Network):
        raise IpamError(400, f"{what} {text}: IPv6 is not supported by shoal's local networks")
    return net


def _address(text: Any, what: str, subnet: IPv4Network | IPv6Network) -> IPv4Address | IPv6Address:
    try:
        address = ip_address(str(text))
        if address.version != subnet.version:
            raise ValueError(text)
    except ValueError:
        raise IpamError(400, f"invalid {what}: {text!r}") from None
    if address not in subnet:
        raise IpamError(400, f"{what} {address} is not in subnet {subnet}")
    return address


def pool_from_config(configs: Any, taken: list[IPv4Network]) -> Pool:
    """The pool of `IPAM.Config` (a list of at most one IPv4 entry) avoiding `taken` subnets."""
    if configs in (None, []):
        for candidate in DEFAULT_POOLS:
            if not any(candidate.overlaps(t) for t in taken):
                return Pool(candidate, next(candidate.hosts()))
        raise IpamError(403, "could not find an available, non-overlapping IPv4 address pool among the "
                             "defaults to assign to the network")
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise IpamError(400, "IPAM.Config must be a list of objects")
    if len(configs) > 1:
        raise IpamError(400, "shoal's local networks take one IPv4 pool (IPAM.Config has more)")
    config = configs[0]
    subnet = _network(config.get("Subnet"), "subnet")
    if subnet.num_addresses < 4:
        raise IpamError(400, f"subnet {subnet} is too small")
    for other in taken:
        if subnet.overlaps(other):
            raise IpamError(403, f"Pool overlaps with other one on this address space ({other})")
    ip_range = _network(config["IPRange"], "ip-range") if config.get("IPRange") else None
    if ip_range is not None and not ip_range.subnet_of(subnet):
        raise IpamError(400, f"ip-range {ip_range} is not in subnet {subnet}")
    gateway = (_address(config["Gateway"], "gateway", subnet) if config.get("Gateway")
               else next(subnet.hosts()))
    aux = config.get("AuxiliaryAddresses") or {}
    if not isinstance(aux, dict):
        raise IpamError(400, "AuxiliaryAddresses must map names to addresses")
    for name, text in aux.items():
        _address(text, f"auxiliary address {name}", subnet)
    return Pool(subnet, gateway, ip_range, {str(k): str(v) for k, v in aux.items()})


def is_ipv6_config(config: Any) -> bool:
    return isinstance(config, dict) and ":" in str(config.get("Subnet") or "")


def ipv6_pool(configs: Any, taken: list[IPv6Network]) -> Pool | None:
    """The IPv6 pool of `IPAM.Config` (its one IPv6 entry; None without one), avoiding `taken`."""
    entries = [c for c in configs if is_ipv6_config(c)] if isinstance(configs, list) else []
    if not entries:
        return None
    if len(entries) > 1:
        raise IpamError(400, "shoal's local networks take one IPv6 pool (IPAM.Config has more)")
    config = entries[0]
    try:
        subnet = ip_network(str(config["Subnet"]), strict=False)
    except ValueError:
        raise IpamError(400, f"invalid subnet {config['Subnet']}: not a CIDR") from None
    if not isinstance(subnet, IPv6Network) or subnet.prefixlen > 126:
        raise IpamError(400, f"subnet {subnet} is too small")
    first = subnet.network_address
    if first.is_multicast or first.is_loopback or first.is_unspecified or first.is_link_local:
        raise IpamError(400, f"invalid subnet {subnet}: not a unicast IPv6 subnet")
    for other in taken:
        if subnet.overlaps(other):
            raise IpamError(403, f"Pool overlaps with other one on this address space ({other})")
    ip_range = None
    if config.get("IPRange"):
        try:
            ip_range = ip_network(str(config["IPRange"]), strict=False)
        except ValueError:
            raise IpamError(400, f"invalid ip-range {config['IPRange']}: not a CIDR") from None
        if not isinstance(ip_range, IPv6Network) or not ip_range.subnet_of(subnet):
            raise IpamError(400, f"ip-range {ip_range} is not in subnet {subnet}")
    gateway = (_address(config["Gateway"], "gateway", subnet) if config.get("Gateway")
               else subnet.network_address + 1)
    if gateway == subnet.network_address:
        raise IpamError(400, f"gateway {gateway} is the subnet's own address")
    return Pool(subnet, gateway, ip_range)


def allocate(pool: Pool, used: set[IPv4Address] | set[IPv6Address], wanted: str = "") -> IPv4Address | IPv6Address:
    """A free address of the pool: `wanted` if given (and free), else the first free one."""
    reserved = {pool.gateway, pool.subnet.network_address, pool.subnet.broadcast_address}
    reserved |= {ip_address(a) for a in pool.aux.values()}
    if wanted:
        address = _address(wanted, "address", pool.subnet)
        if address in used or address in reserved:
            raise IpamError(403, f"Address already in use: {address}")
        return address
    for address in (pool.ip_range or pool.subnet).hosts():
        if address not in used and address not in reserved and address in pool.subnet:
            return address
    raise IpamError(403, f"no available IPv{pool.subnet.version} addresses on this network's address pools: "
                         f"{pool.subnet}")
