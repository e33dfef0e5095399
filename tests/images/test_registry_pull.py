"""Pulls from a real registry (Debian docker-registry on loopback): single and multi-platform,
concurrent, basic auth, token auth; and a lying registry whose blob fails verification."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.images import build_busybox_image, push_image, push_index
from tests.support.registry import (
    RegistryProcess,
    htpasswd_auth,
    requires_registry,
    running_registry,
    token_registry,
)
from worker.images import DigestMismatch, ImageError, ImageStore, Platform, RegistryAuth, RegistryError

pytestmark = requires_registry


def _empty(store: ImageStore) -> bool:
    return (store.images() == [] and list(store.blobs.digests()) == [] and store.layers.chain_ids() == []
            and os.listdir(store.blobs.tmp_dir) == [])


async def test_pull_single_platform(registry: RegistryProcess, tmp_path: Path) -> None:
    image = build_busybox_image()
    digest = await push_image(registry.url, "single/busybox", "v1", image)
    store = ImageStore(tmp_path / "images")
    events: list[dict[str, Any]] = []

    async def progress(event: dict[str, Any]) -> None:
        events.append(event)

    record = await store.pull(f"{registry.host}/single/busybox:v1", progress=progress)
    assert record.id == image.image_id
    assert [t.familiar() for t in store.tags_of(record.id)] == [f"{registry.host}/single/busybox:v1"]
    assert [d.digest for d in store.digests_of(record.id)] == [digest]
    statuses = [e["status"] for e in events]
    assert statuses[0] == f"Pulling from {registry.host}/single/busybox"
    assert statuses.count("Pull complete") == 2 and statuses[-1] == f"Digest: {digest}"
    assert (store.rootfs_layers(record)[1] / "bin/busybox").is_file()
    # pulling by digest finds everything present already
    events.clear()
    again = await store.pull(f"{registry.host}/single/busybox@{digest}", progress=progress)
    assert again.id == record.id and [e["status"] for e in events].count("Already exists") == 2


async def test_pull_multi_platform_index_picks_the_node_platform(registry: RegistryProcess,
                                                                 tmp_path: Path) -> None:
    amd64 = build_busybox_image()
    arm64 = build_busybox_image(arch="arm64", variant="v8")
    index_digest = await push_index(registry.url, "multi/busybox", "latest", [arm64, amd64])
    store = ImageStore(tmp_path / "images", platform=Platform("linux", "amd64"))
    record = await store.pull(f"{registry.host}/multi/busybox")
    assert record.id == amd64.image_id
    assert (store.rootfs_layers(record)[0] / "etc/platform").read_text() == "linux/amd64\n"
    assert [d.digest for d in store.digests_of(record.id)] == [index_digest]
    other = await store.pull(f"{registry.host}/multi/busybox", platform=Platform.parse("linux/arm64"))
    assert other.id == arm64.image_id and other.config["architecture"] == "arm64"
    with pytest.raises(ImageError, match="no matching manifest for linux/s390x"):
        await store.pull(f"{registry.host}/multi/busybox", platform=Platform.parse("linux/s390x"))


async def test_concurrent_pulls_of_one_image_share_the_work(registry: RegistryProcess,
                                                            tmp_path: Path) -> None:
    image = build_busybox_image(cmd=["sleep", "3"])
    await push_image(registry.url, "conc/busybox", "1", image)
    store = ImageStore(tmp_path / "images")
    a, b, c = await asyncio.gather(*(store.ensure(f"{registry.host}/conc/busybox:1") for _ in range(3)))
    assert a.id == b.id == c.id == image.image_id
    assert len(store.layers.chain_ids()) == 2 and os.listdir(store.blobs.tmp_dir) == []


async def test_missing_image_in_registry_is_a_clear_error(registry: RegistryProcess, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(RegistryError, match=r"manifest for .*/nope/nothing:latest not found") as err:
        await store.pull(f"{registry.host}/nope/nothing")
    assert err.value.status == 404
    with pytest.raises(ImageError, match=r"^pulling .*/nope/nothing:latest: manifest for"):
        await store.ensure(f"{registry.host}/nope/nothing")
    assert _empty(store)


async def test_pull_with_basic_auth(tmp_path: Path) -> None:
    image = build_busybox_image()
    users = {"alice": "s3cret"}
    with running_registry(tmp_path / "reg", htpasswd_auth(tmp_path / "auth", users)) as reg:
        basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        async with aiohttp.ClientSession(headers={"Authorization": basic}) as session:
            await push_image(reg.url, "private/busybox", "v1", image, session)
        ref = f"{reg.host}/private/busybox:v1"
        store = ImageStore(tmp_path / "images")
        with pytest.raises(RegistryError, match="requires a login"):
            await store.pull(ref)
        with pytest.raises(RegistryError, match="unauthorized"):
            await store.pull(ref, auth=RegistryAuth("alice", "wrong"))
        assert _empty(store)
        record = await store.pull(ref, auth=RegistryAuth("alice", "s3cret"))
        assert record.id == image.image_id
        # credentials configured per registry host serve ensure() (the worker's path)
        configured = ImageStore(tmp_path / "images2", credentials={reg.host: RegistryAuth("alice", "s3cret")})
        assert (await configured.ensure(ref)).id == image.image_id


async def test_pull_with_token_auth(tmp_path: Path) -> None:
    image = build_busybox_image()
    with running_registry(tmp_path / "registry") as plain:  # seed the storage without auth
        await push_image(plain.url, "tok/busybox", "v1", image)
    async with token_registry(tmp_path, {"bob": "pw"}) as (reg, tokens):  # same storage dir
        ref = f"{reg.host}/tok/busybox:v1"
        store = ImageStore(tmp_path / "images")
        with pytest.raises(RegistryError, match="token server answered HTTP 401"):
            await store.pull(ref)
        record = await store.pull(ref, auth=RegistryAuth("bob", "pw"))
        assert record.id == image.image_id
        assert tokens.requests[-1]["scope"] == "repository:tok/busybox:pull"
        assert tokens.requests[-1]["service"] == "shoal-test-registry"


async def test_blob_that_does_not_match_its_digest_is_rejected(tmp_path: Path) -> None:
    image = build_busybox_image()
    blobs = image.blobs()
    layer_digest = "sha256:" + __import__("hashlib").sha256(image.layer_blobs[1]).hexdigest()

    async def manifest(request: web.Request) -> web.Response:
        return web.Response(body=image.manifest, content_type="application/vnd.oci.image.manifest.v1+json")

    async def blob(request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        data = blobs[digest]
        if digest == layer_digest:
            data = data[:-4] + b"evil"
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/v2/liar/img/manifests/{ref}", manifest)
    app.router.add_get("/v2/liar/img/blobs/{digest}", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        store = ImageStore(tmp_path / "images")
        with pytest.raises(DigestMismatch, match=f"expected {layer_digest}"):
            await store.pull(f"127.0.0.1:{port}/liar/img:latest")
        assert _empty(store)
        with pytest.raises(ImageError, match="digest mismatch"):
            await store.ensure(f"127.0.0.1:{port}/liar/img:latest")
    finally:
        await runner.cleanup()
