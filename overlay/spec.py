"""What the overlay library is asked to build: plain, validated values.

The caller (the worker, fed by the dispatcher) decides every address; this package only
programs the kernel to match. A value that could not be programmed is refused here, at
construction, rather than half-way through a netlink transaction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

VXLAN_OVERHEAD = 50               # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
DEFAULT_UNDERLAY_MTU = 1500
DEFAULT_MTU = DEFAULT_UNDERLAY_MTU - VXLAN_OVERHEAD   # 1450, as Docker
MTU_OPTION = "com.docker.network.driver.mtu"
MAX_VNI = (1 << 24) - 1

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Network ids and sandbox keys become file names under run_dir: no slashes, no dot-files.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"invalid {kind} {value!r}: want 1-128 of [A-Za-z0-9_.-], not starting with . - _")
    return value


def mtu_from_options(options: Mapping[str, str] | None) -> int:
    """The container MTU of an overlay: the driver's MTU option (the underlay's) minus 50."""
    raw = (options or {}).get(MTU_OPTION)
    if raw is None or str(raw).strip() == "":
        return DEFAULT_MTU
    try:
        underlay = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"invalid {MTU_OPTION} option {raw!r}: not an integer") from None
    mtu = underlay - VXLAN_OVERHEAD
    if not 68 <= mtu <= 65535 - VXLAN_OVERHEAD:
        raise ValueError(f"invalid {MTU_OPTION} option {raw!r}: out of range")
    return mtu


@dataclass(frozen=True)
class OverlaySpec:
    """One overlay network as a node programs it: a VXLAN id plus a subnet."""

    network_id: str
    vni: int
    subnet: IPv4Network
    gateway: IPv4Address
    mtu: int = DEFAULT_MTU
    internal: bool = False

    def __post_init__(self) -> None:
        check_name("network id", self.network_id)
        if not 1 <= self.vni <= MAX_VNI:
            raise ValueError(f"network {self.network_id}: vni {self.vni} out of 1..{MAX_VNI}")
        if self.subnet.prefixlen > 30:
            raise ValueError(f"network {self.network_id}: subnet {self.subnet} has no room for endpoints")
        if self.gateway not in self.subnet or self.gateway in (
                self.subnet.network_address, self.subnet.broadcast_address):
            raise ValueError(f"network {self.network_id}: gateway {self.gateway} is not a host of {self.subnet}")
        if not 68 <= self.mtu <= 65535 - VXLAN_OVERHEAD:
            raise ValueError(f"network {self.network_id}: mtu {self.mtu} out of range")


@dataclass(frozen=True)
class Peer:
    """A remote endpoint: its overlay address and MAC, behind the VTEP of its node."""

    ip: IPv4Address
    mac: str
    vtep: IPv4Address

    def __post_init__(self) -> None:
        mac = self.mac.lower()
        if not _MAC.match(mac):
            raise ValueError(f"peer {self.ip}: invalid MAC {self.mac!r}")
        object.__setattr__(self, "mac", mac)


@dataclass(frozen=True)
class Attachment:
    """One interface of a sandbox: its network and its allocated address (with prefix)."""

    spec: OverlaySpec
    address: IPv4Interface

    def __post_init__(self) -> None:
        subnet = self.spec.subnet
        if self.address.network != subnet:
            raise ValueError(f"address {self.address} is not in {subnet} of network {self.spec.network_id}")
        ip = self.address.ip
        if ip in (subnet.network_address, subnet.broadcast_address, self.spec.gateway):
            raise ValueError(f"address {self.address} is reserved on network {self.spec.network_id}")
