"""The Engine API plumbing: version prefixes, version limits, headers and error bodies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from node.daemon import DaemonConfig, build_app


@pytest.fixture
async def client(tmp_path: Path):
    app = build_app(DaemonConfig(data_dir=tmp_path, socket=tmp_path / "s.sock", hostname="node-a"))
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.mark.parametrize("prefix", ["", "/v1.24", "/v1.41", "/v1.47"])
async def test_ping_with_and_without_version_prefix(client: TestClient, prefix: str) -> None:
    resp = await client.get(f"{prefix}/_ping")
    assert resp.status == 200
    assert await resp.text() == "OK"
    assert resp.headers["Api-Version"] == "1.47"
    assert resp.headers["Ostype"] == "linux"
    assert resp.headers["Swarm"] == "inactive"
    head = await client.head(f"{prefix}/_ping")
    assert head.status == 200


async def test_version_reports_engine_fields(client: TestClient) -> None:
    resp = await client.get("/v1.44/version")
    body = await resp.json()
    assert body["ApiVersion"] == "1.47"
    assert body["MinAPIVersion"] == "1.24"
    assert body["Os"] == "linux"
    assert body["Components"][0]["Name"] == "Engine"


async def test_info_reports_inactive_swarm_and_hostname(client: TestClient) -> None:
    body = await (await client.get("/info")).json()
    assert body["Name"] == "node-a"
    assert body["Swarm"]["LocalNodeState"] == "inactive"
    assert body["Swarm"]["ControlAvailable"] is False


async def test_too_new_version_is_400_with_exact_json_content_type(client: TestClient) -> None:
    resp = await client.get("/v1.99/version")
    assert resp.status == 400
    assert resp.headers["Content-Type"] == "application/json"
    body = json.loads(await resp.read())
    assert body["message"] == "client version 1.99 is too new. Maximum supported API version is 1.47"


async def test_too_old_version_is_400(client: TestClient) -> None:
    resp = await client.get("/v1.12/info")
    assert resp.status == 400
    assert "too old" in (await resp.json())["message"]


async def test_unknown_route_is_404_json(client: TestClient) -> None:
    resp = await client.get("/v1.47/nope")
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "application/json"
    assert (await resp.json())["message"]


@pytest.mark.parametrize("body", [b"[" * 100_000, b"[" * 101 + b"]" * 101,
                                  b'{"Name": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
async def test_deeply_nested_json_is_a_400_naming_the_problem(client: TestClient, body: bytes) -> None:
    resp = await client.post("/swarm/init", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["message"] == "invalid JSON body: nested deeper than 100 levels"
    assert (await client.get("/_ping")).status == 200


def test_json_depth_counts_arrays_and_objects() -> None:
    from engineapi.http import json_depth

    assert json_depth(1) == 0 and json_depth([]) == 1 and json_depth({"a": [1, {"b": []}]}) == 4
