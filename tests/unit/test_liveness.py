"""Keepalive settings of cluster-port sockets, and the dispatcher's reaction to an unreachable node."""

from __future__ import annotations

import errno
import socket

import pytest

from rpc.liveness import (
    IDLE_S,
    INTERVAL_S,
    PROBES,
    RTO_MAX_MS,
    TCP_RTO_MAX_MS,
    USER_TIMEOUT_S,
    is_unreachable,
    set_keepalive,
)


def test_tcp_sockets_get_keepalive_probes_and_others_are_left_alone() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        set_keepalive(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == IDLE_S
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == INTERVAL_S
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == PROBES
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == USER_TIMEOUT_S * 1000
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        set_keepalive(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    set_keepalive(None)


def test_only_a_timed_out_connection_counts_as_unreachable() -> None:
    assert is_unreachable(TimeoutError(errno.ETIMEDOUT, "Connection timed out"))
    assert is_unreachable(OSError(errno.ETIMEDOUT, "Connection timed out"))
    assert not is_unreachable(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert not is_unreachable(TimeoutError())          # asyncio's own timeouts carry no errno
    assert not is_unreachable(EOFError())


def test_retransmissions_are_capped_at_a_second_where_the_kernel_can() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            default = sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS)
        except OSError:
            pytest.skip("this kernel has no TCP_RTO_MAX_MS (Linux < 6.13)")
        assert default > RTO_MAX_MS
        set_keepalive(sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) == RTO_MAX_MS
