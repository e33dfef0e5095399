"""The network settings of `swarm init`: default address pools, subnet size, data-path port.

`init_network_settings(request)` checks an init request's `DefaultAddrPool`, `SubnetSize` and
`DataPathPort` with Docker's texts (moby daemon/cluster `validateDefaultAddrPool`,
`getDataPathPort`) and returns what to store on the Cluster object. Docker answers these with a
plain error; shoal raises SpecError, which the API answers with 400.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from manager.specs import SpecError
from model import Cluster

DEFAULT_ADDR_POOL = ("10.0.0.0/8",)
DEFAULT_SUBNET_SIZE = 24
MAX_SUBNET_SIZE = 29  # a /29 leaves 5 addresses after network, broadcast and gateway
DEFAULT_DATA_PATH_PORT = 4789
DATA_PATH_PORTS = (1024, 49151)


@dataclass(frozen=True)
class NetworkSettings:
    default_addr_pool: list[str] = field(default_factory=lambda: list(DEFAULT_ADDR_POOL))
    subnet_size: int = DEFAULT_SUBNET_SIZE
    data_path_port: int = DEFAULT_DATA_PATH_PORT

    def apply(self, cluster: Cluster) -> None:
        cluster.default_addr_pool = list(self.default_addr_pool)
        cluster.subnet_size = self.subnet_size
        cluster.data_path_port = self.data_path_port


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"invalid swarm init request: {what} must be an integer, not {value!r}")
    return value


def validate_default_addr_pool(pools: Any, subnet_size: Any = 0) -> tuple[list[str], int]:
    """(pools, subnet size) to store. No pools: the default 10.0.0.0/8; size 0: 24."""
    size = _integer(subnet_size or 0, "SubnetSize") or DEFAULT_SUBNET_SIZE
    if pools is None or pools == []:
        pools = list(DEFAULT_ADDR_POOL)
    if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
        raise SpecError(f"invalid swarm init request: DefaultAddrPool must be a list of CIDRs, not {pools!r}")
    if size < 0 or size > MAX_SUBNET_SIZE:
        raise SpecError(f"subnet size is out of range: {size}")
    out: list[str] = []
    parsed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for raw in pools:
        text = raw.strip()
        try:
            pool = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise SpecError(f"invalid base pool {text}: invalid CIDR address: {text}") from None
        if size < pool.prefixlen:
            raise SpecError(f'invalid CIDR: "{text}". Subnet size is too small for pool: {size}')
        for other in parsed:
            if other.version == pool.version and other.overlaps(pool):
                raise SpecError(f"invalid default address pool: {text} overlaps with {other}")
        parsed.append(pool)
        out.append(text)
    return out, size


def validate_data_path_port(port: Any) -> int:
    """The VXLAN UDP port to store: 0 (unset) means 4789; otherwise 1024-49151."""
    number = _integer(port or 0, "DataPathPort")
    if number == 0:
        return DEFAULT_DATA_PATH_PORT
    low, high = DATA_PATH_PORTS
    if number < low or number > high:
        raise SpecError(f"Datapath port number is not in valid range ({low}-{high}) : {number}")
    return number


def init_network_settings(request: dict[str, Any]) -> NetworkSettings:
    """Check the network fields of a `POST /swarm/init` body; raise SpecError with Docker's text."""
    pools, size = validate_default_addr_pool(request.get("DefaultAddrPool"), request.get("SubnetSize"))
    return NetworkSettings(pools, size, validate_data_path_port(request.get("DataPathPort")))
