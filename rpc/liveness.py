"""TCP keepalive on cluster-port connections: a peer that stops answering is noticed in seconds.

A crashed daemon's kernel closes its sockets, but a host that died, lost power or was cut off
sends nothing at all; on an idle connection TCP would notice that only after hours. Every
cluster-port socket (accepted by the server, opened by the client) is therefore set to probe
after `IDLE_S` of silence, every `INTERVAL_S`, and to give up after `PROBES` unanswered probes:
`UNREACHABLE_AFTER_S` in all. The probes are answered by the peer's kernel, so a peer whose
daemon is merely busy (a stalled event loop, a saturated CPU) stays connected; only a peer that
is gone or unreachable is cut. Probes only go out while nothing sent is unacknowledged; with
data in flight, `USER_TIMEOUT_S` bounds the wait instead. It is longer, because it also counts
while a live peer that stopped reading (a stalled daemon with a full receive buffer) advertises
a zero window, and such a peer must not be cut. A read then fails with ETIMEDOUT, which
`is_unreachable` recognises.

Retransmissions are capped at one a second (`RTO_MAX_MS`, Linux >= 6.13; ignored elsewhere).
TCP doubles its retransmission timeout while a peer is cut off (up to 120 s by default), so
data sent into a partition (a write forwarded to the leader, a session's reply) used to wait
after the heal for the next retransmission, up to several seconds: the swarm chaos test saw
writes through a healed manager finish 3 s after the heal. With the cap it arrives within a
second; the cost is one retransmission a second per stuck connection, and nothing is cut sooner.
"""

from __future__ import annotations

import contextlib
import errno
import socket

IDLE_S = 1
INTERVAL_S = 1
PROBES = 2
UNREACHABLE_AFTER_S = IDLE_S + INTERVAL_S * PROBES
USER_TIMEOUT_S = 10
RTO_MAX_MS = 1000  # the least the kernel accepts
TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)  # include/uapi/linux/tcp.h


def set_keepalive(sock: socket.socket | None) -> None:
    """Apply the probing above to a connected TCP socket (others are left alone)."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, PROBES)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_S * 1000)
    cap_retransmissions(sock)


def cap_retransmissions(sock: socket.socket) -> None:
    """At most RTO_MAX_MS between retransmissions of a TCP socket, where the kernel can."""
    with contextlib.suppress(OSError):  # before Linux 6.13: ENOPROTOOPT; the default stays
        sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, RTO_MAX_MS)


def is_unreachable(error: BaseException) -> bool:
    """True for the error a read gets once the probes above went unanswered."""
    return isinstance(error, OSError) and error.errno == errno.ETIMEDOUT
