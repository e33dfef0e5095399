"""raft.kv's HTTP side in-process: the fast path answers plain /kv requests, keeps order when
requests are pipelined, closes on `Connection: close`, and hands everything else (with the bytes
already read) to aiohttp, which then serves the connection; both paths answer alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from raft.kv import HTTPFrontend, KVServer, KVStateMachine, parse_simple_request
from raft.node import Member, NodeOptions, RaftNode
from raft.types import NotLeader


@pytest.fixture
async def kv(tmp_path: Path) -> AsyncIterator[tuple[KVServer, str, HTTPFrontend]]:
    sm = KVStateMachine()
    node = RaftNode(1, str(tmp_path / "n1"), sm, members={1: Member(("127.0.0.1", 0), {"http": "x:1"})},
                    options=NodeOptions(tick_interval=0.01, election_tick=5))
    await node.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not node.is_leader:
        assert loop.time() < deadline, "single node did not elect itself"
        await asyncio.sleep(0.01)
    server = KVServer(node, sm)
    frontend = HTTPFrontend(server)
    host, port = await frontend.start("127.0.0.1", 0)
    try:
        yield server, f"{host}:{port}", frontend
    finally:
        await frontend.close()
        await node.stop()


async def exchange(addr: str, raw: bytes, responses: int) -> list[tuple[bytes, bytes]]:
    """Send `raw` on one connection; read `responses` responses as (status line, body)."""
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    out = []
    try:
        for _ in range(responses):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
            out.append((lines[0], body))
    finally:
        writer.close()
    return out


def test_parse_simple_request_accepts_only_plain_kv_requests() -> None:
    ok = parse_simple_request(b"PUT /kv/a-1.b_~ HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\nConnection: close")
    assert ok is not None and (ok.method, ok.key, ok.content_length, ok.close) == (b"PUT", "a-1.b_~", 3, True)
    for head in (b"PUT /kv/a HTTP/1.0\r\nContent-Length: 1",          # HTTP/1.0
                 b"PUT /status HTTP/1.1",                               # not a kv path
                 b"PUT /kv/ HTTP/1.1", b"PUT /kv/.. HTTP/1.1",          # empty or dot segments
                 b"PUT /kv/a%20b HTTP/1.1", b"PUT /kv/a/b HTTP/1.1",    # needs decoding / not one segment
                 b"PUT /kv/a?x=1 HTTP/1.1", b"HEAD /kv/a HTTP/1.1",
                 b"PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked",
                 b"PUT /kv/a HTTP/1.1\r\nExpect: 100-continue",
                 b"PUT /kv/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1",
                 b"PUT /kv/a HTTP/1.1\r\nContent-Length : 1",          # whitespace in a name
                 b"PUT /kv/a HTTP/1.1\r\nContent-Length: -1",
                 b"PUT /kv/a HTTP/1.1\r\nX: y\nContent-Length: 1",     # bare LF
                 b"PUT /kv/a HTTP/1.1\r\nContent-Length: 2000000"):    # body over the fast limit
        assert parse_simple_request(head) is None, head


async def test_fast_path_serves_pipelined_writes_and_reads_in_order(kv) -> None:
    _, addr, frontend = kv
    raw = (b"PUT /kv/k1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
           b"GET /kv/k1 HTTP/1.1\r\nHost: t\r\n\r\n"
           b"DELETE /kv/k1 HTTP/1.1\r\nHost: t\r\n\r\n"
           b"GET /kv/k1 HTTP/1.1\r\nHost: t\r\n\r\n")
    replies = await exchange(addr, raw, 4)
    assert [s for s, _ in replies] == [b"HTTP/1.1 204 No Content", b"HTTP/1.1 200 OK",
                                       b"HTTP/1.1 204 No Content", b"HTTP/1.1 404 Not Found"]
    assert replies[1][1] == b"hello"
    assert frontend.runner.server is not None and frontend.runner.server.connections == []  # aiohttp saw nothing


async def test_request_split_across_packets_and_connection_close(kv) -> None:
    server, addr, _ = kv
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    for part in (b"PUT /kv/split HTTP/1.1\r\nCont", b"ent-Length: 4\r\nConnection: close\r\n\r\nab", b"cd"):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0)
    data = await reader.read()          # the server closes after answering
    writer.close()
    assert data.startswith(b"HTTP/1.1 204 No Content\r\n") and b"Connection: close" in data
    assert server.sm.data["split"] == b"abcd"


async def test_unusual_requests_are_handed_to_aiohttp_with_their_bytes(kv) -> None:
    server, addr, frontend = kv
    # A key that needs decoding goes to aiohttp, and so does the next (plain) request on that connection.
    raw = (b"PUT /kv/a%20b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nv1"
           b"PUT /kv/plain HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nv2"
           b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n")
    replies = await exchange(addr, raw, 3)
    assert [s for s, _ in replies] == [b"HTTP/1.1 204 No Content"] * 2 + [b"HTTP/1.1 200 OK"]
    assert server.sm.data == {"a b": b"v1", "plain": b"v2"}
    assert frontend.runner.server is not None and frontend.runner.server.connections != []
    assert b'"role": "leader"' in replies[2][1]
    # Chunked bodies are aiohttp's too.
    chunked = (b"PUT /kv/c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\n\r\n")
    assert (await exchange(addr, chunked, 1))[0][0] == b"HTTP/1.1 204 No Content"
    assert server.sm.data["c"] == b"abc"


class FollowerNode:
    """Just enough of a RaftNode that follows node 2 for KVServer."""

    def __init__(self) -> None:
        self.leader = 2
        self.members = {2: Member(("127.0.0.1", 1), {"http": "10.0.0.2:8002"})}

    def submit(self, data: bytes) -> asyncio.Future[None]:
        raise NotLeader(2)

    async def read_index(self) -> int:
        raise NotLeader(2)

    def status(self) -> dict[str, object]:
        return {"id": 1, "role": "follower", "leader": 2}


async def test_fast_and_aiohttp_paths_redirect_alike_on_a_follower() -> None:
    server = KVServer(FollowerNode(), KVStateMachine())  # type: ignore[arg-type]
    frontend = HTTPFrontend(server)
    host, port = await frontend.start("127.0.0.1", 0)
    try:
        addr = f"{host}:{port}"
        request = b"PUT /kv/x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n1GET /kv/x HTTP/1.1\r\nHost: t\r\n\r\n"
        fast = await exchange(addr, request, 2)
        # After /status the connection belongs to aiohttp: the same requests, answered by it.
        slow = await exchange(addr, b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n" + request, 3)
        assert [s for s, _ in fast] == [s for s, _ in slow[1:]] == [b"HTTP/1.1 307 Temporary Redirect"] * 2
        assert server.redirect(2, "/kv/x").location == "http://10.0.0.2:8002/kv/x"
        async with aiohttp.ClientSession() as session:
            async with session.put(f"http://{addr}/kv/x", data=b"1", allow_redirects=False) as r:
                assert r.status == 307 and r.headers["Location"] == "http://10.0.0.2:8002/kv/x"
        server.node.leader = 0  # type: ignore[misc]
        server.node.members = {}
        async with aiohttp.ClientSession() as session:
            async with session.put(f"http://{addr}/kv/x", data=b"1", allow_redirects=False) as r:
                assert r.status == 503 and "no leader" in (await r.json())["error"]
    finally:
        await frontend.close()


async def test_a_real_client_round_trip(kv) -> None:
    _, addr, _ = kv
    async with aiohttp.ClientSession() as session:
        async with session.put(f"http://{addr}/kv/via-client", data=b"1") as r:
            assert r.status == 204
        async with session.get(f"http://{addr}/kv/via-client") as r:
            assert r.status == 200 and await r.read() == b"1"
        async with session.get(f"http://{addr}/kv/missing") as r:
            assert r.status == 404 and (await r.json())["error"] == "not found"
