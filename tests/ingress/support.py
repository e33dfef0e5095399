"""Namespaces, links, backends and clients for the data-plane tests (the fixture is conftest.py).

Every namespace is a named one (`ip netns`) whose name starts with this run's own prefix
(`sig<pid><n>-`), so teardown deletes them by name, pass or fail, and nothing is made in the
test process's own namespace. Links are plain veths and bridges (no overlay/): a "switch"
namespace holds the bridges, every other namespace plugs a veth into one.

Clients are sockets made inside a namespace (a throwaway thread joins it just for the socket
call) and then driven by the test's event loop. Backends are tests/ingress/backend.py
processes: HTTP/1.1 keep-alive on TCP, an echo on UDP, answering `NAME PEER-ADDRESS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ingress.dns.netns import open_netns, setns

BACKEND = Path(__file__).with_name("backend.py")
_counter = itertools.count(1)


def needs_root_and_tools() -> pytest.MarkDecorator:
    missing = [t for t in ("nft", "ip", "nsenter", "conntrack", "busybox")
               if not (shutil.which(t) or Path(f"/usr/sbin/{t}").exists())]
    return pytest.mark.skipif(os.geteuid() != 0 or bool(missing),
                              reason=f"needs root and {', '.join(missing) or 'namespaces'}")


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


@dataclass
class Net:
    """The namespaces of one test, deleted by name at the end."""

    base: str = field(default_factory=lambda: f"sig{os.getpid() % 100000:05d}{next(_counter):02d}")
    made: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def ns(self, suffix: str) -> str:
        name = f"{self.base}-{suffix}"
        sh("ip", "netns", "delete", name, check=False)      # a leftover of a crashed run with this pid
        self.made.append(name)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    @staticmethod
    def path(ns: str) -> str:
        return f"/run/netns/{ns}"

    def bridge(self, ns: str, name: str) -> None:
        sh("ip", "-n", ns, "link", "add", name, "type", "bridge")
        sh("ip", "-n", ns, "link", "set", name, "up")

    def plug(self, ns: str, dev: str, address: str | None, switch: str, bridge: str, *,
             mac: str | None = None) -> None:
        """A veth from `ns` (named `dev`, with `address`) to a port of `bridge` in `switch`."""
        port = f"p{next(_counter)}"
        sh("ip", "link", "add", dev, "netns", ns, *(["address", mac] if mac else []),
           "type", "veth", "peer", "name", port, "netns", switch)
        sh("ip", "-n", switch, "link", "set", port, "master", bridge, "up")
        if address:
            sh("ip", "-n", ns, "address", "add", address, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")

    def link(self, ns_a: str, dev_a: str, addr_a: str, ns_b: str, dev_b: str, addr_b: str,
             *, mac_b: str | None = None) -> None:
        sh("ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b,
           *(["address", mac_b] if mac_b else []))
        for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
            sh("ip", "-n", ns, "address", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def backend(self, ns: str, name: str, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = ()) -> None:
        """Start backend.py in `ns`; returns once its sockets are bound (it prints `ready`)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(BACKEND), name,
             "--tcp", ",".join(map(str, tcp)), "--udp", ",".join(map(str, udp))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"backend {name} did not start: {line!r}"

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for name in self.made:
            sh("ip", "netns", "delete", name, check=False)
        left = [n for n in self.made if Path(self.path(n)).exists()]
        assert not left, f"namespaces left behind: {left}"


# ---------------------------------------------------------------- clients


def socket_in(ns: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A non-blocking socket living in namespace `ns`."""
    box: dict[str, object] = {}

    def make() -> None:
        fd = open_netns(Net.path(ns))
        try:
            setns(fd)
        finally:
            os.close(fd)
        try:
            box["sock"] = socket.socket(socket.AF_INET, kind)
        except OSError as exc:
            box["error"] = exc

    import threading
    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    sock = box["sock"]
    assert isinstance(sock, socket.socket)
    sock.setblocking(False)
    return sock


class Http:
    """One keep-alive HTTP connection from a namespace."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, ns: str, host: str, port: int, timeout: float = 5) -> Http:
        sock = socket_in(ns)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def get(self, timeout: float = 5) -> tuple[str, str]:
        """(backend name, the source address it saw)."""
        async with asyncio.timeout(timeout):
            self.writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"Content-Length: (\d+)", head)
            assert m, head
            body = (await self.reader.readexactly(int(m.group(1)))).decode()
        name, peer = body.split()
        return name, peer

    def close(self) -> None:
        self.writer.close()


async def fetch(ns: str, host: str, port: int, timeout: float = 5) -> tuple[str, str]:
    """One request on a new connection."""
    conn = await Http.open(ns, host, port, timeout)
    try:
        return await conn.get(timeout)
    finally:
        conn.close()


async def udp_ask(ns: str, host: str, port: int, timeout: float = 5) -> tuple[str, str]:
    loop = asyncio.get_running_loop()
    with socket_in(ns, socket.SOCK_DGRAM) as sock:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, b"hello")
        async with asyncio.timeout(timeout):
            data = await loop.sock_recv(sock, 1024)
    name, peer = data.decode().split()
    return name, peer


async def connect_error(ns: str, host: str, port: int, timeout: float = 1) -> str:
    """How a TCP connect from `ns` fails: an errno name, "timeout", or "connected"."""
    with socket_in(ns) as sock:
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))
    return "connected"


def ping(ns: str, host: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", host],
                          capture_output=True, timeout=10, check=False).returncode == 0


def nft_ruleset(ns: str) -> str:
    return sh("ip", "netns", "exec", ns, "nft", "list", "ruleset")


@contextlib.contextmanager
def netns_fd(ns: str) -> Iterator[int]:
    fd = open_netns(Net.path(ns))
    try:
        yield fd
    finally:
        os.close(fd)
