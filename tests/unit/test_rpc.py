"""The cluster-port RPC: mutual TLS, role checks, calls, streams and connection loss."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ca.authority import NodeIdentity, RootCA, key_pem, make_csr, new_key
from ca.node_tls import NodeCredentials, bootstrap_client_context, peer_identity
from rpc.client import RpcClient
from rpc.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from rpc.server import Access, Peer, RpcServer


def creds_for(ca: RootCA, node_id: str, role: str, directory: Path) -> tuple[NodeCredentials, Path]:
    key = new_key()
    creds = NodeCredentials(ca.cert_pem, ca.issue(make_csr(key), NodeIdentity(node_id, role, "c")), key_pem(key))
    d = directory / node_id
    creds.save(d)
    return creds, d


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    ca = RootCA.create("c")
    server_creds, server_dir = creds_for(ca, "mgr", "manager", tmp_path)
    server = RpcServer(server_creds.server_context(server_dir), identify=peer_identity)
    release, entered = asyncio.Event(), asyncio.Event()

    async def whoami(peer: Peer, params: dict[str, Any]) -> Any:
        return {"node": peer.node_id, "role": peer.identity.role if peer.identity else None}

    async def admin(peer: Peer, params: dict[str, Any]) -> Any:
        return "ok"

    async def slow(peer: Peer, params: dict[str, Any]) -> Any:
        entered.set()
        await release.wait()
        return "released"

    async def fails(peer: Peer, params: dict[str, Any]) -> Any:
        raise NotFound("node zz not found", node="zz")

    async def count(peer: Peer, params: dict[str, Any]) -> AsyncIterator[Any]:
        for i in range(int(params["n"])):
            yield i

    server.register("whoami", whoami, Access.ANONYMOUS)
    server.register("node.only", whoami, Access.NODE)
    server.register("admin", admin, Access.MANAGER)
    server.register("slow", slow, Access.NODE)
    server.register("fails", fails, Access.NODE)
    server.register_stream("count", count, Access.NODE)
    ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(server.serve("127.0.0.1", 0, ready))
    host, port = await ready
    yield {"ca": ca, "addr": f"{host}:{port}", "dir": tmp_path, "release": release, "entered": entered, "task": task}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_roles_are_enforced_from_certificates(cluster: dict[str, Any]) -> None:
    creds, d = creds_for(cluster["ca"], "w1", "worker", cluster["dir"])
    async with RpcClient(cluster["addr"], creds.client_context(d)) as worker:
        assert await worker.call("node.only") == {"node": "w1", "role": "worker"}
        with pytest.raises(PermissionDenied):
            await worker.call("admin")
    mcreds, md = creds_for(cluster["ca"], "m2", "manager", cluster["dir"])
    async with RpcClient(cluster["addr"], mcreds.client_context(md)) as manager:
        assert await manager.call("admin") == "ok"


async def test_anonymous_peer_reaches_only_anonymous_methods(cluster: dict[str, Any]) -> None:
    async with RpcClient(cluster["addr"], bootstrap_client_context()) as anon:
        assert await anon.call("whoami") == {"node": "", "role": None}
        with pytest.raises(PermissionDenied):
            await anon.call("node.only")
        assert anon.peer_cert_der, "the joiner sees the manager's certificate to check it"


async def test_certificate_from_another_ca_is_refused(cluster: dict[str, Any]) -> None:
    foreign, d = creds_for(RootCA.create("evil"), "x", "manager", cluster["dir"])
    ctx = foreign.client_context(d)
    ctx.load_verify_locations(cadata=cluster["ca"].cert_pem.decode())  # it trusts the server...
    with pytest.raises(Unavailable):  # ...but the server refuses its certificate
        async with RpcClient(cluster["addr"], ctx) as c:
            await c.call("whoami", timeout=5)


async def test_errors_streams_and_unknown_methods(cluster: dict[str, Any]) -> None:
    creds, d = creds_for(cluster["ca"], "w2", "worker", cluster["dir"])
    async with RpcClient(cluster["addr"], creds.client_context(d)) as c:
        with pytest.raises(NotFound, match="node zz not found") as info:
            await c.call("fails")
        assert info.value.details == {"node": "zz"}
        with pytest.raises(InvalidArgument, match="unknown method"):
            await c.call("nope")
        assert [i async for i in c.stream("count", {"n": 5})] == [0, 1, 2, 3, 4]
        # Calls are multiplexed: a blocked call does not hold up others.
        slow = asyncio.create_task(c.call("slow"))
        assert await c.call("node.only") == {"node": "w2", "role": "worker"}
        cluster["release"].set()
        assert await slow == "released"


async def test_connection_loss_fails_pending_calls(cluster: dict[str, Any]) -> None:
    creds, d = creds_for(cluster["ca"], "w3", "worker", cluster["dir"])
    c = await RpcClient(cluster["addr"], creds.client_context(d)).connect()
    pending = asyncio.create_task(c.call("slow", timeout=20))
    await cluster["entered"].wait()
    cluster["task"].cancel()
    with pytest.raises(Unavailable):
        await pending
    await c.close()


async def test_stopping_the_server_with_open_connections_logs_no_error(
        cluster: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """A normal cancellation (the server stops under a live connection and a call in flight) is
    not an error: nothing is logged at ERROR, by shoal or by asyncio."""
    creds, d = creds_for(cluster["ca"], "w1", "worker", cluster["dir"])
    async with RpcClient(cluster["addr"], creds.client_context(d)) as worker:
        assert await worker.call("node.only") == {"node": "w1", "role": "worker"}
        call = asyncio.create_task(worker.call("slow"))
        await cluster["entered"].wait()
        with caplog.at_level(logging.DEBUG):
            cluster["task"].cancel()
            await asyncio.gather(cluster["task"], return_exceptions=True)
            with pytest.raises(Unavailable):
                await call
        # the loop runs the transports' close callbacks and asyncio's own bookkeeping now
        for _ in range(3):
            await asyncio.sleep(0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
