"""Relaying queries the embedded DNS does not answer to the host's resolvers.

Raw relaying over plain UDP/TCP sockets, not a stub resolver library: the client's query goes
upstream byte for byte (its flags, EDNS options, any record type) under a fresh random ID, and
the upstream's reply comes back byte for byte with the client's ID put back. A resolver library
(aiodns/c-ares) would re-ask the question itself and rebuild the answer from parsed records,
losing what it does not model.

Rules (Docker's, see networking.md §5):
  - upstreams in order, at most three; each try has `timeout` seconds (4 s);
  - a host-loopback upstream (127.0.0.0/8, ::1, e.g. systemd-resolved's 127.0.0.53) is dialled
    from the daemon's own network namespace, any other from the container's, so the query
    leaves through the container's own routes; a network without external access (internal)
    skips host-loopback upstreams;
  - a reply counts only if it has our ID, the response bit and our question (anything else on
    the socket is ignored, as a spoofing guard); SERVFAIL and REFUSED from an upstream move on
    to the next one;
  - at most `ForwardLimit.max_in_flight` forwards at once; beyond it REFUSED at once;
  - every upstream failed (or none configured): SERVFAIL.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence

import dns.rcode

from ingress.dns.resolvconf import Upstream
from ingress.dns.resolver import HEADER_SIZE, Forward

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = 4.0
MAX_IN_FLIGHT = 1024
MAX_MESSAGE = 65535

# Makes an unconnected socket of (family, type) in some network namespace.
Dial = Callable[[int, int], Awaitable[socket.socket]]


async def dial_here(family: int, kind: int) -> socket.socket:
    """A socket in the calling thread's own namespace (the daemon's)."""
    return socket.socket(family, kind)


class ForwardLimit:
    """A count of forwards in flight, shared by as many servers as should share the bound."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.max_in_flight:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


class UpstreamError(Exception):
    pass


class Forwarder:
    def __init__(self, upstreams: Callable[[], Sequence[Upstream]], *, dial_container: Dial,
                 dial_host: Dial = dial_here, external_access: bool = True,
                 limit: ForwardLimit | None = None, timeout: float = FORWARD_TIMEOUT) -> None:
        self._upstreams = upstreams
        self._dial_container = dial_container
        self._dial_host = dial_host
        self.external_access = external_access
        self.limit = limit or ForwardLimit()
        self.timeout = timeout

    def candidates(self) -> list[Upstream]:
        return [u for u in self._upstreams() if self.external_access or not u.host_loopback]

    async def forward(self, query: Forward, *, tcp: bool = False) -> bytes:
        """The reply to relay to the client: the upstream's, or REFUSED / SERVFAIL."""
        if not self.limit.try_acquire():
            return query.error(dns.rcode.REFUSED)
        try:
            for upstream in self.candidates():
                try:
                    async with asyncio.timeout(self.timeout):
                        reply = await self._exchange(upstream, query.query, tcp)
                except (OSError, TimeoutError, UpstreamError) as exc:
                    log.debug("dns forward to %s failed: %r", upstream, exc)
                    continue
                if (reply[3] & 0x0F) in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
                    log.debug("dns forward to %s: %s", upstream, dns.rcode.to_text(dns.rcode.Rcode(reply[3] & 0x0F)))
                    continue
                return query.query[:2] + reply[2:]
            return query.error(dns.rcode.SERVFAIL)
        finally:
            self.limit.release()

    async def _exchange(self, upstream: Upstream, query: bytes, tcp: bool) -> bytes:
        dial = self._dial_host if upstream.host_loopback else self._dial_container
        family = socket.AF_INET6 if upstream.address.version == 6 else socket.AF_INET
        sent = secrets.randbits(16).to_bytes(2, "big") + query[2:]
        loop = asyncio.get_running_loop()
        with await dial(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            target = (str(upstream.address), upstream.port)
            if tcp:
                await loop.sock_connect(sock, target)
                await loop.sock_sendall(sock, len(sent).to_bytes(2, "big") + sent)
                size = int.from_bytes(await _recv_exactly(loop, sock, 2), "big")
                reply = await _recv_exactly(loop, sock, size)
                if not reply_matches(sent, reply):
                    raise UpstreamError("a reply to another query")
                return reply
            sock.connect(target)  # UDP: no handshake, returns at once
            await loop.sock_sendall(sock, sent)
            while True:
                reply = await loop.sock_recv(sock, MAX_MESSAGE)
                if reply_matches(sent, reply):
                    return reply


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise UpstreamError("upstream closed the connection")
        data += chunk
    return data


def question_end(message: bytes) -> int | None:
    """Where the question section of a DNS message ends, or None if it runs off the end."""
    if len(message) < HEADER_SIZE:
        return None
    pos = HEADER_SIZE
    for _ in range(int.from_bytes(message[4:6], "big")):
        while True:
            if pos >= len(message):
                return None
            length = message[pos]
            if length == 0:
                pos += 1
                break
            if length & 0xC0 == 0xC0:  # a compression pointer ends the name
                pos += 2
                break
            pos += 1 + length
        pos += 4  # qtype, qclass
    return pos if pos <= len(message) else None


def reply_matches(sent: bytes, reply: bytes) -> bool:
    """Is `reply` the answer to `sent`: same ID, a response, same question (case aside)? An
    upstream may leave the question out of an error reply."""
    if len(reply) < HEADER_SIZE or reply[:2] != sent[:2] or not reply[2] & 0x80:
        return False
    if reply[4:6] == b"\0\0" and reply[3] & 0x0F:
        return True
    end, reply_end = question_end(sent), question_end(reply)
    if end is None or reply_end is None:
        return False
    return reply[4:6] == sent[4:6] and reply[HEADER_SIZE:reply_end].lower() == sent[HEADER_SIZE:end].lower()
