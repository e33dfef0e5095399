"""Health checks of standalone containers (`docker run --health-cmd ...`) with the docker CLI over
real runc containers: State.Health in inspect goes starting → unhealthy → healthy as the probe
fails then passes, `docker ps` shows it and filters on it, and each change is a `health_status`
event. The API is tests/executor/test_docker_run.py's, with the event bus in reach."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engineapi.events import EventBus
from engineapi.http import Routes, new_app
from tests.api.support import serve_unix
from tests.executor.conftest import needs_root_and_runc
from tests.executor.test_container_api import Docker
from tests.executor.test_docker_run import BusyboxImages
from tests.support.wait import async_wait_until
from worker.executor import Executor
from worker.executor.node_api import add_node_container_routes
from worker.standalone import api as standalone_api
from worker.standalone.containers import StandaloneContainers

pytestmark = needs_root_and_runc()


@pytest.fixture
async def docker_and_bus(executor: Executor, busybox_layer: Path,
                         tmp_path: Path) -> AsyncIterator[tuple[Docker, EventBus]]:
    app, bus = new_app(), EventBus()
    routes = Routes(app)
    containers = add_node_container_routes(app, routes, executor, lambda ref: "sha256:" + "cd" * 32, bus)
    standalone_api.add_routes(app, routes, StandaloneContainers(containers, BusyboxImages(busybox_layer)))
    async with serve_unix(app, tmp_path / "api.sock") as host:
        yield Docker(host, tmp_path / "cfg"), bus


async def test_health_of_a_standalone_container(docker_and_bus: tuple[Docker, EventBus]) -> None:
    docker, bus = docker_and_bus
    cid = (await docker.run("run", "-d", "--name", "checked", "--health-cmd", "cat /tmp/ok", "--health-interval",
                            "200ms", "--health-retries", "1", "busybox", "sleep", "1000"))[1].strip()
    try:
        async def health() -> dict[str, Any]:
            return json.loads((await docker.run("inspect", "-f", "{{json .State.Health}}", "checked"))[1])

        assert (await health())["Status"] in ("starting", "unhealthy")
        state = await async_wait_until(lambda: _with_status(health, "unhealthy"), timeout=20, what="unhealthy")
        assert state is not None and state["FailingStreak"] >= 1 and state["Log"][-1]["ExitCode"] == 1
        await docker.run("exec", "checked", "touch", "/tmp/ok")
        state = await async_wait_until(lambda: _with_status(health, "healthy"), timeout=20, what="healthy")
        assert state is not None and state["FailingStreak"] == 0 and state["Log"][-1]["ExitCode"] == 0
        _, out, _ = await docker.run("ps", "--filter", "health=healthy", "--format", "{{.Names}} {{.Status}}")
        assert out.startswith("checked Up ") and out.endswith("(healthy)\n")
        _, config, _ = await docker.run("inspect", "-f", "{{json .Config.Healthcheck.Test}}", "checked")
        assert json.loads(config) == ["CMD-SHELL", "cat /tmp/ok"]
        history, _ = bus.subscribe()
        actions = [m["Action"] for m in history if m.get("id") == cid and m["Action"].startswith("health_status")]
        assert actions[:2] == ["health_status: unhealthy", "health_status: healthy"]
        path = docker.env["DOCKER_HOST"].removeprefix("unix://")
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session:
            async with session.post("http://d/v1.47/containers/create", json={
                    "Image": "busybox", "Cmd": ["true"], "Healthcheck": {"Test": ["BOGUS", "x"]}}) as resp:
                assert resp.status == 400
                assert "Healthcheck.Test must start with NONE, CMD or CMD-SHELL" in (await resp.json())["message"]
    finally:
        await docker.run("rm", "-f", "checked")


async def test_a_stopped_container_keeps_its_last_health(docker_and_bus: tuple[Docker, EventBus],
                                                         executor: Executor) -> None:
    docker, _ = docker_and_bus
    cid = (await docker.run("run", "-d", "--name", "kept", "--health-cmd", "true", "--health-interval", "200ms",
                            "busybox", "sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"))[1].strip()
    try:
        async def health() -> dict[str, Any]:
            return json.loads((await docker.run("inspect", "-f", "{{json .State.Health}}", "kept"))[1])

        await async_wait_until(lambda: _with_status(health, "healthy"), timeout=20, what="healthy")
        await docker.run("stop", "-t", "5", "kept")

        async def let_go() -> bool:      # the watcher is done: nothing holds the shared monitor
            gc.collect()
            return executor._health.get(cid) is None

        await async_wait_until(let_go, timeout=10, what="the health monitor let go")
        state = await health()           # a fresh monitor, from the kept record: not "starting"
        assert state["Status"] == "healthy" and state["FailingStreak"] == 0
        assert state["Log"] and state["Log"][-1]["ExitCode"] == 0
        _, out, _ = await docker.run("ps", "-a", "--filter", "health=healthy", "--format", "{{.Names}}")
        assert out == "kept\n"
    finally:
        await docker.run("rm", "-f", "kept")


async def _with_status(health: Any, wanted: str) -> dict[str, Any] | None:
    state: dict[str, Any] = await health()
    return state if state["Status"] == wanted else None
