"""One embedded DNS server per container sandbox, served by the daemon's event loop.

Lifecycle (`start`, then `close`):
  1. open the sandbox's network namespace (the fd is held until close, so the namespace and
     its rules cannot be swapped under us);
  2. in a short-lived thread that joins that namespace, bind a UDP and a TCP socket on
     127.0.0.11 at random ports (the daemon's own threads never change namespace);
  3. install the NAT rules that make them 127.0.0.11:53 there (nat.py, one transaction);
  4. serve both sockets from one runner task owning a TaskGroup: the TCP accept loop, one task
     per TCP connection and one per forwarded UDP query are its children.
`close()` cancels the runner (so every child), closes the sockets, removes the rules and closes
the namespace fd, in that order; it is idempotent.

Invariant: every query is answered from the records and networks current when it arrives;
`update()` swaps them in one assignment, so the very next query sees the new set.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import cast

import dns.rcode

from aio import cancel_and_wait
from ingress.dns.forwarder import FORWARD_TIMEOUT, Forwarder, ForwardLimit
from ingress.dns.nat import NatError, nat_script, removal_script, run_nft
from ingress.dns.netns import open_netns, run_in_netns
from ingress.dns.records import ServiceRecords
from ingress.dns.resolvconf import EMBEDDED_ADDRESS, Upstream, upstreams
from ingress.dns.resolver import Answer, Drop, Forward, answer

log = logging.getLogger(__name__)

TCP_BACKLOG = 128
MAX_TCP_CONNECTIONS = 256
TCP_IDLE_TIMEOUT = 10.0  # seconds a TCP client may sit between queries


class HostResolvers:
    """The upstreams named in the host's resolv.conf, re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._upstreams: list[Upstream] = []

    def __call__(self) -> list[Upstream]:
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._key:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    self._upstreams = upstreams(f.read())
                self._key = key
        except OSError as exc:
            log.warning("dns: reading upstreams from %s: %s (keeping %d known)", self.path, exc,
                        len(self._upstreams))
        return self._upstreams


def _open_listeners(address: str) -> tuple[socket.socket, socket.socket]:
    """Runs inside the sandbox's namespace: a UDP and a listening TCP socket at random ports."""
    opened: list[socket.socket] = []
    try:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        opened.append(udp)
        udp.bind((address, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        opened.append(tcp)
        tcp.bind((address, 0))
        tcp.listen(TCP_BACKLOG)
    except OSError as exc:
        for s in opened:
            s.close()
        raise OSError(exc.errno, f"binding {address} in the sandbox namespace: {exc.strerror}") from exc
    udp.setblocking(False)
    tcp.setblocking(False)
    return udp, tcp


def _close_all(sockets: Sequence[socket.socket]) -> None:
    for s in sockets:
        s.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # asyncio's is no subclass of it

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.server._on_datagram(self.transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns: udp error: %r", exc)


class DnsServer:
    """The embedded DNS of one sandbox (the network namespace at `netns_path`).

    `records`: the node's table; `networks`: the ids of the networks the sandbox is attached to,
    in resolution order (user overlays, then ingress). `resolv_conf_path`: the host's resolver
    file, whose nameservers are the upstreams. `external_access=False` for a sandbox only on
    internal networks (host-loopback upstreams are skipped). `limit` may be shared by several
    servers to bound forwards node-wide; `rng` shuffles multi-address answers. The sandbox's
    loopback must be up for clients to reach 127.0.0.11 (the sandbox's owner sets it up)."""

    def __init__(self, netns_path: str, records: ServiceRecords, networks: Sequence[str], *,
                 resolv_conf_path: str = "/etc/resolv.conf", external_access: bool = True,
                 rng: random.Random | None = None, limit: ForwardLimit | None = None,
                 timeout: float = FORWARD_TIMEOUT) -> None:
        self.netns_path = netns_path
        self._records = records
        self._networks: tuple[str, ...] = tuple(networks)
        self._rng = rng or random.Random()
        self._resolvers = HostResolvers(resolv_conf_path)
        self._forwarder = Forwarder(self._resolvers, dial_container=self._dial_container,
                                    external_access=external_access, limit=limit, timeout=timeout)
        self._netns_fd: int | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tcp_connections: set[socket.socket] = set()
        self.udp_port = 0
        self.tcp_port = 0

    # -- what it answers ---------------------------------------------------------------------

    @property
    def records(self) -> ServiceRecords:
        return self._records

    @property
    def networks(self) -> tuple[str, ...]:
        return self._networks

    def update(self, records: ServiceRecords | None = None, *, networks: Sequence[str] | None = None) -> None:
        """New records and/or networks, in effect for the next query."""
        if records is not None:
            self._records = records
        if networks is not None:
            self._networks = tuple(networks)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._netns_fd is not None:
            raise RuntimeError("DnsServer already started")
        self._resolvers()  # read (and log about) the host's resolvers now rather than at the first miss
        fd = open_netns(self.netns_path)
        self._netns_fd = fd
        try:
            udp, tcp = await run_in_netns(fd, functools.partial(_open_listeners, EMBEDDED_ADDRESS),
                                          discard=_close_all)
            try:
                self.udp_port, self.tcp_port = udp.getsockname()[1], tcp.getsockname()[1]
                try:      # a namespace without the table (a new sandbox): no delete, no grace period
                    await run_nft(fd, nat_script(EMBEDDED_ADDRESS, self.udp_port, self.tcp_port, replace=False))
                except NatError:
                    await run_nft(fd, nat_script(EMBEDDED_ADDRESS, self.udp_port, self.tcp_port))
                ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._runner = asyncio.create_task(self._serve(udp, tcp, ready),
                                                   name=f"dns-server {self.netns_path}")
            except BaseException:
                _close_all((udp, tcp))
                raise
            await ready
        except BaseException:
            await self.close()
            raise

    async def close(self, *, remove_rules: bool = True) -> None:
        """Stop serving; `remove_rules=False` leaves the NAT rules to a namespace that is about to
        be deleted (removing them costs a kernel grace period)."""
        runner, self._runner = self._runner, None
        fd, self._netns_fd = self._netns_fd, None
        try:
            for error in await cancel_and_wait([runner]):
                log.warning("dns server %s ended with %r", self.netns_path, error)
        finally:
            if fd is not None:
                try:
                    if self.udp_port and remove_rules:
                        await run_nft(fd, removal_script())
                except (NatError, OSError) as exc:
                    log.debug("dns: removing the nat rules of %s: %s", self.netns_path, exc)
                finally:
                    os.close(fd)

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- serving -----------------------------------------------------------------------------

    async def _serve(self, udp: socket.socket, tcp: socket.socket, ready: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                try:
                    transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp)
                except Exception as exc:
                    ready.set_exception(exc)
                    return
                self._tg = tg
                tg.create_task(self._accept(tg, tcp))
                ready.set_result(None)
                await asyncio.Event().wait()  # until close() cancels us
        except Exception:
            log.exception("dns server %s stopped", self.netns_path)
            raise
        finally:
            self._tg = None
            if transport is not None:
                transport.close()
            else:
                udp.close()
            tcp.close()
            for conn in self._tcp_connections:  # accepted, but their task never got to run
                conn.close()
            self._tcp_connections.clear()

    def _on_datagram(self, transport: asyncio.DatagramTransport, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = answer(data, self._records, self._networks, self._rng)
        except Exception:
            log.exception("dns: answering a query")
            return
        if isinstance(reply, Answer):
            transport.sendto(reply.wire, addr)
        elif isinstance(reply, Forward):
            limit = self._forwarder.limit
            if self._tg is None or limit.in_flight >= limit.max_in_flight:
                transport.sendto(reply.error(dns.rcode.REFUSED), addr)  # no task for a query we refuse
                return
            self._tg.create_task(self._forward_udp(transport, reply, addr))

    async def _forward_udp(self, transport: asyncio.DatagramTransport, query: Forward, addr: tuple[str, int]) -> None:
        try:
            wire = await self._forwarder.forward(query)
        except Exception:
            log.exception("dns: forwarding a query")
            wire = query.error(dns.rcode.SERVFAIL)
        if not transport.is_closing():
            transport.sendto(wire, addr)

    async def _accept(self, tg: asyncio.TaskGroup, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. out of fds: keep the server, try again shortly
                log.warning("dns: accept: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if len(self._tcp_connections) >= MAX_TCP_CONNECTIONS:
                conn.close()
                continue
            self._tcp_connections.add(conn)
            tg.create_task(self._serve_tcp(conn))

    async def _serve_tcp(self, conn: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
            while True:
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    query = await reader.readexactly(size)
                reply = answer(query, self._records, self._networks, self._rng, tcp=True)
                if isinstance(reply, Drop):
                    break
                wire = reply.wire if isinstance(reply, Answer) else await self._forwarder.forward(reply, tcp=True)
                writer.write(len(wire).to_bytes(2, "big") + wire)
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("dns: serving a tcp connection")
        finally:
            self._tcp_connections.discard(conn)
            if writer is None:
                conn.close()
            elif writer.transport.get_write_buffer_size():
                writer.transport.abort()
            else:
                writer.close()

    # -- dialling upstreams from the sandbox ---------------------------------------------------

    async def _dial_container(self, family: int, kind: int) -> socket.socket:
        if self._netns_fd is None:
            raise OSError("dns server closed")
        return await run_in_netns(self._netns_fd, functools.partial(socket.socket, family, kind),
                                  discard=socket.socket.close)
