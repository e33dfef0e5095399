"""Raft lanes cap TCP's retransmission timeout (raft/transport.py): appends queued into a
partition must reach the peer within a second of the heal, not after TCP's doubled timeout."""

from __future__ import annotations

import asyncio
import socket

import pytest

from raft.transport import RTO_MAX_MS, TCP_RTO_MAX_MS, _cap_retransmissions


def test_a_dialled_lane_retransmits_at_least_once_a_second() -> None:
    with socket.socket() as probe:
        try:
            default = probe.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS)
        except OSError:
            pytest.skip("this kernel has no TCP_RTO_MAX_MS (Linux < 6.13)")
    assert default > RTO_MAX_MS

    async def dial() -> int:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            _cap_retransmissions(writer)
            value = int(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS))
            writer.close()
            return value
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(dial()) == RTO_MAX_MS
