"""Small pyroute2 helpers for links and addresses, tolerant of what is already there or gone.

All of them block; call them on the data path's thread only (see datapath.py). A sync
pyroute2 IPRoute runs its own event loop, so it cannot be used on a thread whose loop runs.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from overlay import netns
from overlay.plan import VxlanParams


class OverlayError(Exception):
    """A request the data path cannot carry out (unknown network or sandbox, exhausted pool)."""


def missing(exc: NetlinkError) -> bool:
    return exc.code in (errno.ENODEV, errno.ENOENT, errno.ESRCH)


def get_link(ipr: IPRoute, name: str) -> Any | None:
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if missing(exc):
            return None
        raise


def must_get_link(ipr: IPRoute, name: str) -> Any:
    link = get_link(ipr, name)
    if link is None:
        raise OverlayError(f"device {name} vanished right after it was made")
    return link


def link_index(ipr: IPRoute, name: str) -> int:
    return int(must_get_link(ipr, name)["index"])


def delete_link(ipr: IPRoute, name: str) -> bool:
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if missing(exc):
            return False
        raise
    return True


def add_link(ipr: IPRoute, name: str, **kwargs: Any) -> None:
    """Create a link; one left over under the same name (a half-done earlier try) is replaced."""
    try:
        ipr.link("add", ifname=name, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
        delete_link(ipr, name)
        ipr.link("add", ifname=name, **kwargs)


def ipv4_addresses(ipr: IPRoute, index: int) -> set[IPv4Interface]:
    return {IPv4Interface(f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}")
            for m in ipr.addr("dump", index=index, family=socket.AF_INET)}


def set_address(ipr: IPRoute, index: int, wanted: IPv4Interface) -> None:
    """Make `wanted` the one IPv4 address of a link."""
    present = ipv4_addresses(ipr, index)
    for extra in present - {wanted}:
        ipr.addr("del", index=index, address=str(extra.ip), prefixlen=extra.network.prefixlen)
    if wanted not in present:
        ipr.addr("add", index=index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen)


def veths(ipr: IPRoute) -> dict[str, Any]:
    return {link.get("ifname"): link for link in ipr.get_links() if link.get(("linkinfo", "kind")) == "veth"}


def vxlan_params(link: Any) -> VxlanParams | None:
    if link is None or link.get(("linkinfo", "kind")) != "vxlan":
        return None
    local = link.get(("linkinfo", "data", "vxlan_local"))
    return VxlanParams(
        vni=int(link.get(("linkinfo", "data", "vxlan_id"))),
        port=int(link.get(("linkinfo", "data", "vxlan_port"))),
        local=IPv4Address(local) if local else None,
        learning=bool(link.get(("linkinfo", "data", "vxlan_learning"))),
        proxy=bool(link.get(("linkinfo", "data", "vxlan_proxy"))),
    )


def ipr_in(path: Path) -> IPRoute:
    """A pyroute2 socket opened in the namespace at `path` (the thread is switched back)."""
    with netns.entered(path):
        return IPRoute(groups=0)


@contextlib.contextmanager
def temporary_ipr(path: Path) -> Iterator[IPRoute]:
    """A pyroute2 socket in the namespace at `path` for the body only: a socket keeps its
    namespace alive, and a sandbox's must die with its container."""
    ipr = ipr_in(path)
    try:
        yield ipr
    finally:
        ipr.close()
