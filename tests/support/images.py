"""Test images: the builder lives in worker.images.busybox_image (the lab's demo uses it too);
this module adds importing into a store and pushing to a registry.

`build_busybox_image(tmpdir)` makes a two-layer image (see worker.images.busybox_image), which
can be written as a docker-save or OCI layout archive, imported into an ImageStore, or pushed to
a registry (including a multi-platform index).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from worker.images.busybox_image import (  # noqa: F401 - re-exported for tests
    APPLETS,
    BUSYBOX,
    MTIME,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    BuiltImage,
    TarBuilder,
    app_layer,
    base_layer,
    build_busybox_image,
    gzip_bytes,
    sha256,
    write_docker_save,
    write_oci_layout,
)


async def import_into_store(store: Any, image: BuiltImage, tmpdir: Path,
                            tag: str = "busybox:latest") -> Any:
    """Load `image` into an `ImageStore` (via a docker-save archive); returns the ImageRecord."""
    archive = write_docker_save(image, Path(tmpdir) / f"import-{image.config_digest[7:19]}.tar", [tag])
    results = await store.load(archive)
    archive.unlink()
    return results[0][0]


async def import_busybox(store: Any, tmpdir: Path, tag: str = "busybox:latest", **options: Any) -> Any:
    """Build the busybox image with `options` and load it into `store` under `tag`."""
    return await import_into_store(store, build_busybox_image(tmpdir, **options), tmpdir, tag)


# ---- registry push (distribution API: POST/PUT blob uploads, PUT manifest) ---------------------

async def push_blob(session: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> str:
    digest = sha256(data)
    async with session.head(f"{base}/v2/{repo}/blobs/{digest}") as resp:
        if resp.status == 200:
            return digest
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        if resp.status != 202:
            raise AssertionError(f"upload start: HTTP {resp.status}: {await resp.text()}")
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    async with session.put(f"{location}{sep}digest={digest}", data=data,
                           headers={"Content-Type": "application/octet-stream"}) as resp:
        if resp.status != 201:
            raise AssertionError(f"upload {digest}: HTTP {resp.status}: {await resp.text()}")
    return digest


async def push_manifest(session: aiohttp.ClientSession, base: str, repo: str, reference: str,
                        data: bytes, media_type: str) -> None:
    async with session.put(f"{base}/v2/{repo}/manifests/{reference}", data=data,
                           headers={"Content-Type": media_type}) as resp:
        if resp.status != 201:
            raise AssertionError(f"manifest {reference}: HTTP {resp.status}: {await resp.text()}")


async def push_image(base: str, repo: str, tag: str, image: BuiltImage,
                     session: aiohttp.ClientSession | None = None) -> str:
    """Push one image to the registry at `base` (http://host:port); returns the manifest digest."""
    async with _session(session) as s:
        for blob in [image.config, *image.layer_blobs]:
            await push_blob(s, base, repo, blob)
        await push_manifest(s, base, repo, tag, image.manifest, OCI_MANIFEST)
    return image.manifest_digest


async def push_index(base: str, repo: str, tag: str, images: list[BuiltImage],
                     session: aiohttp.ClientSession | None = None) -> str:
    """Push several platform images and an OCI index over them under `tag`; returns its digest."""
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [i.descriptor() for i in images]}).encode()
    async with _session(session) as s:
        for image in images:
            for blob in [image.config, *image.layer_blobs]:
                await push_blob(s, base, repo, blob)
            await push_manifest(s, base, repo, image.manifest_digest, image.manifest, OCI_MANIFEST)
        await push_manifest(s, base, repo, tag, index, OCI_INDEX)
    return sha256(index)


class _session:
    def __init__(self, given: aiohttp.ClientSession | None) -> None:
        self._given = given
        self._own: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> aiohttp.ClientSession:
        if self._given is not None:
            return self._given
        self._own = aiohttp.ClientSession()
        return self._own

    async def __aexit__(self, *exc: object) -> None:
        if self._own is not None:
            await self._own.close()
