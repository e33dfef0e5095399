"""A small DNS server standing in for the host's resolver in tests (never the internet).

It serves a UDP and a TCP socket it is handed (made in whatever namespace the test wants) from
the running loop, answers A queries for the names in its zone (plus a TXT record, so relaying
of other types shows), NXDOMAIN for the rest, and records every query it sees. `mode` makes it
misbehave: "silent" never answers, "servfail" answers SERVFAIL, "spoof" sends a reply with a
wrong ID before the right one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rrset

from aio import cancel_and_wait


@dataclass
class Seen:
    transport: str
    name: str
    id: int


@dataclass
class FakeUpstream:
    zone: dict[str, str]
    mode: str = "answer"
    seen: list[Seen] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _transport: asyncio.DatagramTransport | None = None
    _sockets: list[socket.socket] = field(default_factory=list)
    got_query: asyncio.Event = field(default_factory=asyncio.Event)

    def reply(self, wire: bytes, transport: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        name = query.question[0].name.to_text().lower()
        self.seen.append(Seen(transport, name, query.id))
        self.got_query.set()
        if self.mode == "silent":
            return None
        response = dns.message.make_response(query)
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name in self.zone:
            response.answer.append(dns.rrset.from_text(name, 30, "IN", "A", self.zone[name]))
            response.answer.append(dns.rrset.from_text(name, 30, "IN", "TXT", '"from the fake upstream"'))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    async def serve(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        udp.setblocking(False)
        tcp.setblocking(False)
        self._sockets = [udp, tcp]
        upstream = self

        class Protocol(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                upstream._transport = transport  # type: ignore[assignment]

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                out = upstream.reply(data, "udp")
                assert upstream._transport is not None
                if out is not None:
                    if upstream.mode == "spoof":
                        wrong = ((int.from_bytes(out[:2], "big") + 1) % 65536).to_bytes(2, "big")
                        upstream._transport.sendto(wrong + out[2:], addr)
                    upstream._transport.sendto(out, addr)

        await loop.create_datagram_endpoint(Protocol, sock=udp)
        tcp.listen(16)
        self._tasks.append(asyncio.create_task(self._accept(tcp)))

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            self._tasks.append(asyncio.create_task(self._serve_tcp(conn)))

    async def _serve_tcp(self, conn: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=conn)
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                out = self.reply(await reader.readexactly(size), "tcp")
                if out is not None:
                    writer.write(len(out).to_bytes(2, "big") + out)
                    await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._transport is not None:
            self._transport.close()
        for s in self._sockets:
            s.close()


def bind_pair(host: str, port: int = 0) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to the same (host, port); port 0 picks a free one for both."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(20):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((host, port))
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            if port:
                raise
            continue
        return udp, tcp
    raise OSError(f"no port free for both UDP and TCP on {host}")


@contextlib.asynccontextmanager
async def running(upstream: FakeUpstream, udp: socket.socket, tcp: socket.socket) -> AsyncIterator[FakeUpstream]:
    await upstream.serve(udp, tcp)
    try:
        yield upstream
    finally:
        await upstream.close()
