"""The /volumes Engine API endpoints and the `shoal volume` commands, against a real server on
a unix socket (no containers involved)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from cli.client import ApiResponseError, DaemonClient
from cli.volume_cmds import volume
from engineapi.http import Routes, new_app
from worker.executor.api import add_routes
from worker.executor.volumes import VolumeStore


class ServerThread:
    """An API server with only the volume routes, on its own loop in a thread."""

    def __init__(self, socket: Path, store: VolumeStore) -> None:
        self.socket = socket
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = new_app()
        add_routes(Routes(app), self.store)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.UnixSite(self.runner, str(self.socket)).start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        assert self.ready.wait(10), "volume API server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path / "api.sock", VolumeStore(tmp_path / "volumes")) as s:
        yield s


async def test_api_create_list_inspect_remove(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path / "volumes")
    app = new_app()
    add_routes(Routes(app), store)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = tmp_path / "a.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        async with DaemonClient(f"unix://{sock}") as c:
            status, vol = await c.request("POST", "/v1.47/volumes/create",
                                          body={"Name": "data", "Labels": {"env": "prod"}})
            assert status == 201
            assert vol["Name"] == "data" and vol["Driver"] == "local" and vol["Scope"] == "local"
            assert vol["Mountpoint"].endswith("/volumes/data/_data")
            await c.post("/volumes/create", {"Name": "other"})
            names = [v["Name"] for v in (await c.get("/volumes"))["Volumes"]]
            assert names == ["data", "other"]
            filtered = await c.get("/volumes", filters={"label": ["env=prod"]})
            assert [v["Name"] for v in filtered["Volumes"]] == ["data"]
            assert (await c.get("/volumes/data"))["Labels"] == {"env": "prod"}
            store.acquire("data", "ctr1")
            dangling = await c.get("/volumes", filters={"dangling": ["true"]})
            assert [v["Name"] for v in dangling["Volumes"]] == ["other"]
            with pytest.raises(ApiResponseError) as in_use:
                await c.delete("/volumes/data")
            assert in_use.value.status == 409 and "in use" in in_use.value.message
            with pytest.raises(ApiResponseError) as missing:
                await c.get("/volumes/nope")
            assert missing.value.status == 404 and "no such volume" in missing.value.message
            with pytest.raises(ApiResponseError) as bad:
                await c.post("/volumes/create", {"Name": "bad/name"})
            assert bad.value.status == 400
            store.release("data", "ctr1")
            assert (await c.request("DELETE", "/volumes/data"))[0] == 204
            report = await c.post("/volumes/prune", filters={"all": ["true"]})
            assert report["VolumesDeleted"] == ["other"]
            assert (await c.get("/volumes"))["Volumes"] == []
    finally:
        await runner.cleanup()


def test_cli_volume_commands(server: ServerThread) -> None:
    runner = CliRunner()
    env = {"SHOAL_HOST": f"unix://{server.socket}"}

    def shoal_volume(*args: str, code: int = 0) -> str:
        result = runner.invoke(volume, list(args), env=env, obj={"host": f"unix://{server.socket}"})
        assert result.exit_code == code, result.output
        return result.output

    assert shoal_volume("create", "--label", "team=a", "alpha").strip() == "alpha"
    anonymous = shoal_volume("create").strip()
    assert len(anonymous) == 64
    assert "alpha" in shoal_volume("ls")
    assert shoal_volume("ls", "-q", "--filter", "label=team=a").split() == ["alpha"]
    inspected = json.loads(shoal_volume("inspect", "alpha"))
    assert inspected[0]["Labels"] == {"team": "a"}
    (Path(inspected[0]["Mountpoint"]) / "f").write_text("12345")
    server.store.acquire("alpha", "c1")
    assert "in use" in shoal_volume("rm", "alpha", code=1)
    server.store.release("alpha", "c1")
    out = shoal_volume("prune", "-f")               # anonymous only
    assert anonymous in out and "alpha" not in out
    assert shoal_volume("ls", "-q").split() == ["alpha"]
    assert "Total reclaimed space: 5B" in shoal_volume("prune", "-f", "--all")
    assert shoal_volume("ls", "-q").split() == []
    assert "no such volume" in shoal_volume("rm", "ghost", code=1)
