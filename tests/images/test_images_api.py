"""The Engine API image routes, served by aiohttp's TestServer over a real ImageStore."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engineapi.http import Routes, new_app
from tests.support.images import build_busybox_image, push_image, write_docker_save
from tests.support.registry import RegistryProcess, requires_registry
from worker.images import ImageStore
from worker.images.api import add_routes


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    app = new_app()
    add_routes(Routes(app), ImageStore(tmp_path / "images"))
    async with TestClient(TestServer(app)) as c:
        yield c


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_load_list_inspect_tag_save_delete(client: TestClient, tmp_path: Path) -> None:
    image = build_busybox_image()
    archive = write_docker_save(image, tmp_path / "a.tar", ["busybox:latest"])
    resp = await client.post("/v1.47/images/load", data=archive.read_bytes())
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    assert _lines(await resp.text()) == [{"stream": "Loaded image: busybox:latest\n"}]

    rows = await (await client.get("/images/json")).json()
    assert [(r["Id"], r["RepoTags"]) for r in rows] == [(image.image_id, ["busybox:latest"])]
    filtered = await client.get("/images/json", params={"filters": json.dumps({"reference": {"nope*": True}})})
    assert await filtered.json() == []
    bad_filter = await client.get("/images/json", params={"filters": json.dumps({"bogus": ["x"]})})
    assert bad_filter.status == 400 and (await bad_filter.json())["message"] == "invalid filter 'bogus'"
    bad_bool = await client.get("/images/json", params={"filters": json.dumps({"dangling": {"true": False}})})
    assert bad_bool.status == 400 and (await bad_bool.json())["message"] == "invalid filter 'dangling=[true]'"

    body = await (await client.get("/v1.47/images/busybox/json")).json()
    assert body["Id"] == image.image_id and body["Config"]["WorkingDir"] == "/home/app"
    assert body["RootFS"]["Layers"] == image.diff_ids and body["Os"] == "linux"
    missing = await client.get("/images/nope/json")
    assert missing.status == 404 and await missing.json() == {"message": "No such image: nope:latest"}
    assert missing.headers["Content-Type"] == "application/json"

    resp = await client.post("/images/busybox/tag", params={"repo": "reg.test/team/bb", "tag": "2"})
    assert resp.status == 201
    assert (await (await client.get("/images/reg.test/team/bb:2/json")).json())["Id"] == image.image_id
    history = await (await client.get("/images/busybox/history")).json()
    assert [h["CreatedBy"] for h in history] == ["app layer", "busybox base"]

    saved = await client.get("/images/get", params=[("names", "reg.test/team/bb:2")])
    assert saved.status == 200 and saved.headers["Content-Type"] == "application/x-tar"
    fresh = ImageStore(tmp_path / "fresh")
    (tmp_path / "saved.tar").write_bytes(await saved.read())
    [(record, tags)] = await fresh.load(tmp_path / "saved.tar")
    assert record.id == image.image_id and [t.familiar() for t in tags] == ["reg.test/team/bb:2"]
    assert (await client.get("/images/nope/get")).status == 404

    resp = await client.delete("/images/reg.test/team/bb:2")
    assert await resp.json() == [{"Untagged": "reg.test/team/bb:2"}]
    resp = await client.delete(f"/images/{image.image_id}")
    assert await resp.json() == [{"Untagged": "busybox:latest"}, {"Deleted": image.image_id}]
    assert (await client.delete("/images/busybox")).status == 404

    dist = await client.get("/distribution/busybox/json")
    assert dist.status == 200 and (await dist.json())["Platforms"] == []


async def test_load_of_a_corrupt_archive_is_a_400(client: TestClient) -> None:
    resp = await client.post("/images/load", data=io.BytesIO(b"garbage" * 50).read())
    assert resp.status == 400
    assert (await resp.json())["message"].startswith("invalid archive")
    empty = await client.post("/images/load", data=b"")
    assert empty.status == 400


async def test_prune(client: TestClient, tmp_path: Path) -> None:
    image = build_busybox_image()
    archive = write_docker_save(image, tmp_path / "a.tar", [])
    await client.post("/images/load", data=archive.read_bytes())
    bad = await client.post("/images/prune", params={"filters": json.dumps({"reference": ["x"]})})
    assert bad.status == 400 and (await bad.json())["message"] == "invalid filter 'reference'"
    resp = await client.post("/images/prune", params={"filters": json.dumps({"dangling": ["true"]})})
    body = await resp.json()
    assert body["ImagesDeleted"] == [{"Deleted": image.image_id}] and body["SpaceReclaimed"] > 0
    assert await (await client.get("/images/json")).json() == []


@requires_registry
async def test_pull_streams_progress_and_unknown_images_are_404(
        client: TestClient, registry: RegistryProcess) -> None:
    image = build_busybox_image(cmd=["echo", "api"])
    await push_image(registry.url, "api/busybox", "v1", image)
    resp = await client.post("/v1.47/images/create",
                             params={"fromImage": f"{registry.host}/api/busybox", "tag": "v1"})
    assert resp.status == 200
    events = _lines(await resp.text())
    assert events[0]["status"] == f"Pulling from {registry.host}/api/busybox"
    assert events[-1] == {"status": f"Status: Downloaded newer image for {registry.host}/api/busybox:v1"}
    assert not any("error" in e for e in events)
    again = _lines(await (await client.post("/images/create", params={
        "fromImage": f"{registry.host}/api/busybox:v1"})).text())
    assert again[-1]["status"].startswith("Status: Image is up to date")
    missing = await client.post("/images/create", params={"fromImage": f"{registry.host}/api/none"})
    assert missing.status == 404 and "not found" in (await missing.json())["message"]
    bad = await client.post("/images/create", params={"fromImage": "library/BusyBox"})
    assert bad.status == 400 and "invalid reference format" in (await bad.json())["message"]
