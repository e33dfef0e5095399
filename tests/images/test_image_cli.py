"""`shoal image …` through click's CliRunner against the image routes served on a unix socket."""

from __future__ import annotations

import asyncio
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from aiohttp import web
from click.testing import CliRunner

from cli.image_cmds import image
from engineapi.http import Routes, new_app
from tests.support.images import build_busybox_image, push_image, write_docker_save
from tests.support.registry import RegistryProcess, requires_registry
from worker.images import ImageStore
from worker.images.api import add_routes


class ThreadedApi:
    """The image routes on a unix socket, served by a loop in a thread (CliRunner is sync)."""

    def __init__(self, socket: Path, store_root: Path) -> None:
        self.socket = socket
        self.store_root = store_root
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = new_app()
        add_routes(Routes(app), ImageStore(self.store_root))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(self.socket)).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> ThreadedApi:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("image API did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@click.group()
@click.option("-H", "--host")
@click.pass_context
def root(ctx: click.Context, host: str | None) -> None:
    ctx.obj = {"host": host}


root.add_command(image)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ThreadedApi]:
    with ThreadedApi(tmp_path / "api.sock", tmp_path / "images") as served:
        yield served


def shoal(api: ThreadedApi, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(root, ["-H", f"unix://{api.socket}", "image", *args])
    return result.exit_code, result.output


def test_image_commands_round_trip(api: ThreadedApi, tmp_path: Path) -> None:
    built = build_busybox_image()
    archive = write_docker_save(built, tmp_path / "in.tar", ["busybox:latest"])
    assert shoal(api, "load", "-i", str(archive)) == (0, "Loaded image: busybox:latest\n")
    code, out = shoal(api, "ls")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert row.split()[:3] == ["busybox", "latest", built.image_id[7:19]]
    assert shoal(api, "tag", "busybox", "reg.test/x/bb:2") == (0, "")
    code, out = shoal(api, "ls", "-q", "--filter", "reference=reg.test/*/bb")
    assert (code, out) == (0, built.image_id[7:19] + "\n")
    code, out = shoal(api, "inspect", "reg.test/x/bb:2")
    assert code == 0 and json.loads(out)[0]["Id"] == built.image_id
    saved = tmp_path / "out.tar"
    assert shoal(api, "save", "-o", str(saved), "busybox")[0] == 0
    with tarfile.open(saved) as tf:
        assert json.load(tf.extractfile("manifest.json"))[0]["RepoTags"] == ["busybox:latest"]  # type: ignore[arg-type]
    assert shoal(api, "rm", "reg.test/x/bb:2") == (0, "Untagged: reg.test/x/bb:2\n")
    code, out = shoal(api, "rm", "busybox")
    assert code == 0 and out.splitlines() == ["Untagged: busybox:latest", f"Deleted: {built.image_id}"]
    assert shoal(api, "ls", "-q") == (0, "")
    code, out = shoal(api, "load", "-i", str(saved))
    assert (code, out) == (0, "Loaded image: busybox:latest\n")
    code, out = shoal(api, "prune", "-a", "-f")
    assert code == 0 and f"deleted: {built.image_id}" in out and "Total reclaimed space:" in out


def test_errors_are_one_line(api: ThreadedApi, tmp_path: Path) -> None:
    code, out = shoal(api, "inspect", "nope")
    assert code == 1 and out == "Error response from daemon: No such image: nope:latest\n"
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"junk" * 100)
    code, out = shoal(api, "load", "-i", str(bad))
    assert code == 1 and out.startswith("Error response from daemon: invalid archive")
    code, out = shoal(api, "save", "-o", str(tmp_path / "x.tar"), "nope")
    assert code == 1 and "No such image: nope:latest" in out and not (tmp_path / "x.tar").exists()


@requires_registry
def test_pull(api: ThreadedApi, registry: RegistryProcess) -> None:
    built = build_busybox_image(cmd=["echo", "cli"])
    asyncio.run(push_image(registry.url, "cli/busybox", "v1", built))
    code, out = shoal(api, "pull", f"{registry.host}/cli/busybox:v1")
    assert code == 0, out
    assert out.count("Pull complete") == 2
    assert out.splitlines()[-1] == f"Status: Downloaded newer image for {registry.host}/cli/busybox:v1"
    code, out = shoal(api, "pull", f"{registry.host}/cli/none")
    assert code == 1 and "not found" in out
