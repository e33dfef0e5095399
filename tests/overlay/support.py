"""A two-host testbed for the overlay data path, on the real kernel (the fixture is in conftest.py).

Every namespace the testbed makes is a bind mount below one fresh directory of its own
(`/tmp/shoal-ov-*`), never in /run/netns: host A and host B (joined by a veth pair on the
underlay 198.19.0.0/24, a benchmarking range), and, inside each host's run_dir, the networks
and sandboxes its OverlayHost makes. Teardown closes every OverlayHost and unmounts all that
is below that directory, deepest first: with the hosts' namespaces gone go their VXLAN
devices, gateway bridges and nftables tables. Nothing is made in the test process's own
namespace. Teardown fails the test if a mount survives.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2 import IPRoute

from overlay import Attachment, OverlayHost, OverlaySpec, Peer, mac_from_ip
from overlay import netns as ovnetns

UNDERLAY = IPv4Network("198.19.0.0/24")
PORT = 4789


def needs_root_and_tools() -> pytest.MarkDecorator:
    missing = [tool for tool in ("nsenter", "busybox", "nft") if shutil.which(tool) is None]
    return pytest.mark.skipif(os.geteuid() != 0 or bool(missing),
                              reason=f"needs root and {', '.join(missing) or 'namespaces'}")


def mounts_below(root: Path) -> list[str]:
    prefix = os.path.realpath(root)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def unmount_below(root: Path) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for point in sorted(set(mounts_below(root)), key=len, reverse=True):
        libc.umount2(point.encode(), ovnetns.MNT_DETACH)


T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` to completion on a thread of its own: pyroute2's blocking API cannot run on a
    thread whose event loop is running (the test's)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


@contextlib.contextmanager
def ipr_in(path: Path) -> Iterator[IPRoute]:
    """A netlink socket in namespace `path` (the calling thread is switched back at once).
    Only on a thread without a running event loop (see off_loop)."""
    with ovnetns.entered(path):
        ipr = IPRoute(groups=0)
    try:
        yield ipr
    finally:
        ipr.close()


def socket_in(path: Path, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A non-blocking socket living in namespace `path`."""
    with ovnetns.entered(path):
        sock = socket.socket(socket.AF_INET, kind)
    sock.setblocking(False)
    return sock


def run_in(path: Path, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={path}", "--", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


def ping(path: Path, ip: IPv4Address | str, wait: int = 1) -> bool:
    """One echo request from namespace `path`; waits at most `wait` seconds for the reply."""
    return run_in(path, "busybox", "ping", "-c", "1", "-W", str(wait), str(ip)).returncode == 0


def links(path: Path) -> dict[str, dict[str, Any]]:
    """name → {index, mtu, mac, kind, state, master, vxlan_local, addresses} of every link in
    namespace `path`."""
    return off_loop(_links, path)


def _links(path: Path) -> dict[str, dict[str, Any]]:
    found = {}
    with ipr_in(path) as ipr:
        for link in ipr.get_links():
            index = link["index"]
            found[link.get("ifname")] = {
                "index": index, "mtu": link.get("mtu"), "mac": link.get("address"),
                "kind": link.get(("linkinfo", "kind")), "state": link["state"],
                "master": link.get("master"),
                "vxlan_local": link.get(("linkinfo", "data", "vxlan_local")),
                "addresses": {IPv4Interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
                              for a in ipr.addr("dump", index=index, family=socket.AF_INET)},
            }
    return found


def default_route(path: Path) -> str | None:
    return off_loop(_default_route, path)


def _default_route(path: Path) -> str | None:
    with ipr_in(path) as ipr:
        for route in ipr.route("dump", family=socket.AF_INET, table=254):
            if route["dst_len"] == 0:
                return str(route.get("RTA_GATEWAY"))
    return None


def inode(path: Path) -> int:
    return os.stat(path).st_ino


async def tcp_echo(server_ns: Path, server_ip: IPv4Address | str, client_ns: Path, payload: bytes,
                   port: int = 7000, timeout: float = 10) -> tuple[bytes, str]:
    """Send `payload` from a socket in `client_ns` to an echo server in `server_ns`; returns
    what came back and the source address the server saw."""
    loop = asyncio.get_running_loop()
    server = socket_in(server_ns)
    client = socket_in(client_ns)
    with server, client:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((str(server_ip), port))
        server.listen(1)

        async def serve() -> str:
            conn, (peer, _) = await loop.sock_accept(server)
            with conn:
                conn.setblocking(False)
                received = bytearray()
                while len(received) < len(payload):
                    chunk = await loop.sock_recv(conn, 65536)
                    if not chunk:
                        break
                    received += chunk
                await loop.sock_sendall(conn, bytes(received))
            return str(peer)

        async def send() -> bytes:
            await loop.sock_connect(client, (str(server_ip), port))
            await loop.sock_sendall(client, payload)
            echoed = bytearray()
            while len(echoed) < len(payload):
                chunk = await loop.sock_recv(client, 65536)
                if not chunk:
                    break
                echoed += chunk
            return bytes(echoed)

        async with asyncio.timeout(timeout), asyncio.TaskGroup() as tg:
            served = tg.create_task(serve())
            sent = tg.create_task(send())
        return sent.result(), served.result()


async def connect_error(client_ns: Path, ip: IPv4Address | str, port: int = 7000, timeout: float = 1) -> str:
    """How a TCP connect from `client_ns` fails: an errno name, or "timeout"."""
    loop = asyncio.get_running_loop()
    with socket_in(client_ns) as client:
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(client, (str(ip), port))
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            import errno
            return errno.errorcode.get(exc.errno or 0, str(exc))
    return "connected"


@dataclass
class Host:
    name: str
    ns: Path                      # the "daemon's" namespace (its underlay is eth0)
    vtep: IPv4Address
    run_dir: Path
    overlay: OverlayHost | None = None

    @property
    def ov(self) -> OverlayHost:
        assert self.overlay is not None
        return self.overlay

    def network_ns(self, network_id: str) -> Path:
        return self.run_dir / "netns" / f"n-{network_id}"


@dataclass
class TwoHosts:
    root: Path
    a: Host
    b: Host
    opened: list[OverlayHost] = field(default_factory=list)

    async def start(self, host: Host, vtep: IPv4Address | None = None) -> OverlayHost:
        """A new OverlayHost for `host` (a daemon starting, or restarting over the same run_dir)."""
        overlay = OverlayHost(vtep or host.vtep, PORT, host.run_dir, "shoal", netns=host.ns)
        self.opened.append(overlay)
        await overlay.__aenter__()
        host.overlay = overlay
        return overlay

    async def close(self) -> None:
        for overlay in self.opened:
            await overlay.close()


def spec(network_id: str, vni: int, third: int, internal: bool = False) -> OverlaySpec:
    subnet = IPv4Network(f"10.0.{third}.0/24")
    return OverlaySpec(network_id, vni, subnet, subnet.network_address + 1, internal=internal)


def endpoint(s: OverlaySpec, host_byte: int) -> Attachment:
    return Attachment(s, IPv4Interface(f"{s.subnet.network_address + host_byte}/{s.subnet.prefixlen}"))


def peer_of(att: Attachment, host: Host) -> Peer:
    return Peer(att.address.ip, mac_from_ip(att.address.ip), host.vtep)


def make_underlay(root: Path) -> tuple[Host, Host]:
    hosts = []
    for i, name in enumerate(("a", "b"), start=1):
        ns = root / "hosts" / name
        ovnetns.create(ns)
        hosts.append(Host(name, ns, UNDERLAY.network_address + i, root / name / "run"))
    a, b = hosts
    fd_b = ovnetns.open_netns(b.ns)
    try:
        with ipr_in(a.ns) as ipr:
            ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd_b})
    finally:
        os.close(fd_b)
    for host in hosts:
        with ipr_in(host.ns) as ipr:
            ipr.link("set", index=ipr.link("get", ifname="lo")[0]["index"], state="up")
            eth0 = ipr.link("get", ifname="eth0")[0]["index"]
            ipr.addr("add", index=eth0, address=str(host.vtep), prefixlen=UNDERLAY.prefixlen)
            ipr.link("set", index=eth0, state="up")
    return a, b
