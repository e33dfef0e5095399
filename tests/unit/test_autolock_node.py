"""A locked node in-process (no lab): a SwarmNode whose data key file is wrapped starts locked and
runs nothing; the API gate answers cluster calls with Docker's 503 and lets /_ping, /info, unlock
and leave through; unlock refuses malformed and wrong keys with Docker's statuses and texts; a
leave needs --force and then forgets the swarm."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ca.encryption import DataKey, KeyFile, new_unlock_key
from ca.node_tls import save_key_file
from engineapi.http import ApiError, Routes, new_app
from node.autolock import LOCKED, LOCKED_LEAVE, locked_gate
from node.state import LocalSwarmState
from node.swarm_node import SwarmNode
from tests.support.fake_executor import FakeExecutor


def locked_node(tmp_path: Path) -> tuple[SwarmNode, str]:
    key = new_unlock_key()
    LocalSwarmState(node_id="n1", cluster_id="c1", role="manager", advertise_addr="127.0.0.1:2377",
                    listen_addr="127.0.0.1:2377", raft_id=7).save(tmp_path)
    certs = LocalSwarmState.certs_dir(tmp_path)
    certs.mkdir(parents=True)
    save_key_file(certs, KeyFile.for_key(DataKey.generate(), key))
    node = SwarmNode(tmp_path, listen_addr="127.0.0.1:0", advertise_addr="", hostname="h",
                     executor=FakeExecutor(), description=dict, leader_loops=[])
    return node, key


async def test_a_locked_node_runs_nothing_and_refuses_bad_keys_then_leaves(tmp_path: Path) -> None:
    node, key = locked_node(tmp_path)
    async with asyncio.TaskGroup() as group:
        node._group = group
        await node.resume()      # what run() does first
        assert node.swarm_state() == "locked" and node.swarm_info()["LocalNodeState"] == "locked"
        assert node.runtime is None and node.agent is None and node.manager_store() is None
        for bad, status, text in (("SWMKEY-2-abc", 400, "invalid key string"),
                                  (new_unlock_key(), 401, "swarm could not be unlocked: invalid key provided")):
            with pytest.raises(ApiError) as info:
                await node.unlock(bad)
            assert (info.value.status, info.value.message) == (status, text)
        assert node.locked
        with pytest.raises(ApiError) as info:
            await node.leave(force=False)
        assert (info.value.status, info.value.message) == (503, LOCKED_LEAVE)
        await node.leave(force=True)
        assert node.state is None and not node.locked and node.swarm_state() == "inactive"
        assert not (tmp_path / "swarm").exists()
        with pytest.raises(ApiError) as info:
            await node.unlock(key)
        assert info.value.status == 503     # not in a swarm: Docker's "not a swarm manager"


async def test_the_gate_serves_only_ping_info_unlock_and_leave_while_locked() -> None:
    locked = True
    app = new_app(locked_gate(lambda: locked))

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    routes = Routes(app)
    for method, path in (("GET", "/_ping"), ("GET", "/info"), ("GET", "/services"), ("GET", "/swarm"),
                         ("POST", "/swarm/unlock"), ("POST", "/swarm/leave"), ("GET", "/containers/json")):
        routes.add(method, path, ok)
    async with TestClient(TestServer(app)) as client:
        for method, path in (("GET", "/_ping"), ("GET", "/v1.44/info"), ("POST", "/swarm/unlock"),
                             ("POST", "/v1.44/swarm/leave"), ("GET", "/containers/json")):
            assert (await client.request(method, path)).status == 200, path
        for path in ("/services", "/v1.44/swarm"):
            response = await client.get(path)
            assert response.status == 503 and (await response.json())["message"] == LOCKED
        locked = False
        assert (await client.get("/services")).status == 200
