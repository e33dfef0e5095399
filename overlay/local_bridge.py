"""The data path of local (bridge driver) networks: a Linux bridge per network in the daemon's
namespace, one veth per container endpoint, and a namespace per standalone container.

Theory of operation: every call is given what to build (names, addresses, the MAC): the
addresses are decided by the caller's IPAM (worker.localnet), never here. A network is a bridge
`br-<id[:12]>` holding the gateway address, up; an endpoint is a veth pair whose host end
(`vl<hash>`, named from the network and container so it can be found again) is a port of the
bridge and whose other end is moved into the container's namespace, renamed `eth<N>`, given the
endpoint's MAC and address, and brought up; the first non-internal endpoint also gets the
default route through its gateway. A container's namespace is a file under the caller's
directory kept alive by an nsfs bind mount (overlay.netns), made before the container and
removed after it. Every call blocks (netlink through pyroute2, whose sync socket runs its own
event loop): call from a worker thread (`asyncio.to_thread`), never from the event loop's.
Each is idempotent: what is already there is kept or replaced, what is gone is fine.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path

from pyroute2 import IPRoute

from overlay import netns
from overlay.links import OverlayError, add_link, delete_link, get_link, link_index, set_address, temporary_ipr
from overlay.plan import delete_table_ruleset, masquerade_ruleset


def bridge_name(network_id: str) -> str:
    return f"br-{network_id[:12]}"


def host_veth_name(network_id: str, container_id: str) -> str:
    return "vl" + hashlib.sha256(f"{network_id}/{container_id}".encode()).hexdigest()[:11]


def nat_table(bridge: str) -> str:
    return f"shoal-{bridge}"


def _nft(script: str) -> None:
    """One atomic nftables transaction, in the calling thread's namespace (nft forks from it)."""
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OverlayError(f"nft: {proc.stderr.strip() or proc.stdout.strip()}")


IFA_F_NODAD = 0x02      # an IPv6 address usable at once (no duplicate address detection wait)


def _add_ipv6(ipr: IPRoute, index: int, address: str) -> None:
    interface = IPv6Interface(address)
    ipr.addr("replace", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen,
             family=socket.AF_INET6, flags=IFA_F_NODAD)


def ensure_bridge(name: str, gateway: str, masquerade: bool, gateway6: str | None = None) -> None:
    """The bridge `name` with `gateway` ("172.18.0.1/16") as its address (and `gateway6`, an
    IPv6 one, for an IPv6 network), up; with `masquerade` (a network that is not internal),
    traffic from its IPv4 subnet leaving through another interface is masqueraded and the
    namespace forwards, as dockerd's bridge driver does."""
    with IPRoute() as ipr:
        if get_link(ipr, name) is None:
            add_link(ipr, name, kind="bridge")
        index = link_index(ipr, name)
        set_address(ipr, index, IPv4Interface(gateway))
        if gateway6:
            _add_ipv6(ipr, index, gateway6)
        ipr.link("set", index=index, state="up")
    if masquerade:
        netns.write_sysctl("ipv4/ip_forward", "1")
        _nft(masquerade_ruleset(nat_table(name), IPv4Interface(gateway).network, name))
    else:
        _nft(delete_table_ruleset(nat_table(name)))


def remove_bridge(name: str) -> None:
    with IPRoute() as ipr:
        delete_link(ipr, name)
    _nft(delete_table_ruleset(nat_table(name)))


def create_namespace(path: Path) -> None:
    """A namespace for a container at `path` (kept if it exists), its `lo` up."""
    if not netns.is_bound(path):
        netns.prepare_dir(path.parent)
        netns.create(path)
    with temporary_ipr(path) as ipr:
        ipr.link("set", index=link_index(ipr, "lo"), state="up")


def remove_namespace(path: Path) -> None:
    netns.remove(path)


def plug(bridge: str, host_end: str, namespace: Path, ifname: str, address: str, mac: str,
         gateway: str | None, address6: str | None = None, gateway6: str | None = None) -> None:
    """A veth from `bridge` into `namespace`, named `ifname` there with `address` ("10.1.0.5/24")
    and `mac` (and `address6`, "2001:db8::2/64", on an IPv6 network); with `gateway` (`gateway6`),
    the namespace's default route (IPv6 default route) goes through it."""
    fd = netns.open_netns(namespace)
    try:
        with IPRoute() as home:
            add_link(home, host_end, kind="veth", master=link_index(home, bridge), state="up",
                     peer={"ifname": ifname, "net_ns_fd": fd, "address": mac})
    finally:
        os.close(fd)
    with temporary_ipr(namespace) as inner:
        index = link_index(inner, ifname)
        interface = IPv4Interface(address)
        inner.addr("replace", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)
        inner.link("set", index=index, state="up")
        if gateway:
            inner.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index)
        if address6:
            _add_ipv6(inner, index, address6)
        if address6 and gateway6:
            inner.route("replace", dst="::/0", gateway=gateway6, oif=index, family=socket.AF_INET6)


def add_address(namespace: Path, ifname: str, address: str) -> None:
    """One more address ("169.254.8.8/16") on `ifname` in `namespace`."""
    with temporary_ipr(namespace) as inner:
        interface = IPv4Interface(address)
        inner.addr("replace", index=link_index(inner, ifname), address=str(interface.ip),
                   prefixlen=interface.network.prefixlen)


def unplug(host_end: str) -> None:
    """Remove an endpoint's veth (its other end goes with it)."""
    with IPRoute() as home:
        delete_link(home, host_end)


def routed_subnets() -> list[str]:
    """The IPv4 destinations ("10.1.0.0/24") the calling thread's namespace routes now, the
    default route left out: what a new network's subnet must not overlap."""
    out = []
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2):
            length = route["dst_len"]
            dst = route.get_attr("RTA_DST")
            if dst and length:
                out.append(f"{dst}/{length}")
    return out


def next_ifname(namespace: Path) -> str:
    """The first `eth<N>` not present in `namespace`."""
    with temporary_ipr(namespace) as inner:
        names = {link.get("ifname") for link in inner.get_links()}
    n = 0
    while f"eth{n}" in names:
        n += 1
    return f"eth{n}"
