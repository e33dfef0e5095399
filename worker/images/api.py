"""Engine API image endpoints, served from one node's `ImageStore`.

Handlers translate `ImageError`s into `{"message"}` errors with the error's own status (404 for
`No such image: …`, 409 for conflicts, 400 for bad input). Pulls stream newline-delimited JSON
progress objects; the response is only started by the first progress event, so a pull that
fails before any (unknown manifest, auth refused) is still a plain HTTP error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from engineapi.filters import request_filters
from engineapi.http import ApiError, Routes, json_response, query_bool
from worker.images import views
from worker.images.errors import ImageError
from worker.images.manifest import Platform
from worker.images.reference import parse_reference
from worker.images.registry import RegistryAuth
from worker.images.store import ImageStore

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STREAM_CHUNK = 256 * 1024


PRUNE_FILTERS = ("dangling", "label")


def _errors_as_api(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ImageError as e:
            raise ApiError(e.status, e.message) from e

    return wrapped


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\r\n"


class ImageHandlers:
    def __init__(self, store: ImageStore) -> None:
        self.store = store

    async def list_images(self, request: web.Request) -> web.Response:
        filters = request_filters(request, views.LIST_FILTERS)
        wanted = dict(filters)
        if "dangling" in filters:
            # dockerd reads it as one boolean (GetBoolOrDefault): "true"/"1" or "false"/"0"
            wanted["dangling"] = [str(filters.bool_value("dangling", False)).lower()]
        return json_response(views.list_images(self.store, wanted))

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(views.inspect(self.store, self.store.get(request.match_info["name"])))

    async def history(self, request: web.Request) -> web.Response:
        return json_response(views.history(self.store.get(request.match_info["name"])))

    async def create(self, request: web.Request) -> web.StreamResponse:
        from_image = request.query.get("fromImage", "")
        if not from_image:
            if request.query.get("fromSrc"):
                raise ApiError(400, "importing a rootfs tarball (fromSrc) is not supported")
            raise ApiError(400, "fromImage is required")
        tag = request.query.get("tag", "")
        text = from_image
        if tag:
            text += f"@{tag}" if tag.startswith("sha256:") else f":{tag}"
        ref = parse_reference(text)
        platform = Platform.parse(request.query["platform"]) if request.query.get("platform") else None
        auth = RegistryAuth.from_header(request.headers.get("X-Registry-Auth"))
        existed = None
        with contextlib.suppress(ImageError):
            existed = self.store.get(ref.full()).id
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/json"

        async def progress(event: dict[str, Any]) -> None:
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write(_line(event))

        try:
            record = await self.store.pull(ref, auth=auth, progress=progress, platform=platform)
        except ImageError as e:
            if not resp.prepared:
                raise
            await resp.write(_line({"errorDetail": {"message": e.message}, "error": e.message}))
            await resp.write_eof()
            return resp
        if existed == record.id:
            await progress({"status": f"Status: Image is up to date for {ref.familiar()}"})
        else:
            await progress({"status": f"Status: Downloaded newer image for {ref.familiar()}"})
        await resp.write_eof()
        return resp

    async def load(self, request: web.Request) -> web.Response:
        quiet = query_bool(request, "quiet")
        fd, name = tempfile.mkstemp(prefix="load-", suffix=".tar", dir=self.store.blobs.tmp_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.content.iter_chunked(STREAM_CHUNK):
                    out.write(chunk)
            if os.stat(path).st_size == 0:
                raise ApiError(400, "invalid archive: the request body is empty")
            results = await self.store.load(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        lines = []
        for record, tags in results:
            if tags:
                lines += [{"stream": f"Loaded image: {t.familiar()}\n"} for t in tags]
            else:
                lines.append({"stream": f"Loaded image ID: {record.id}\n"})
        body = b"" if quiet else b"".join(_line(line) for line in lines)
        return web.Response(body=body, content_type="application/json")

    async def _save(self, request: web.Request, names: list[str]) -> web.StreamResponse:
        if not names:
            raise ApiError(400, "no image names given")
        for name in names:
            self.store.get(name)  # 404 before the stream starts
        fd, tmp = tempfile.mkstemp(prefix="save-", suffix=".tar", dir=self.store.blobs.tmp_dir)
        path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                await self.store.save(names, out)
            resp = web.StreamResponse(status=200)
            resp.content_type = "application/x-tar"
            resp.content_length = os.stat(path).st_size
            await resp.prepare(request)
            f = await asyncio.to_thread(open, path, "rb")
            try:
                while chunk := await asyncio.to_thread(f.read, STREAM_CHUNK):
                    await resp.write(chunk)
            finally:
                f.close()
            await resp.write_eof()
            return resp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def save_many(self, request: web.Request) -> web.StreamResponse:
        return await self._save(request, request.query.getall("names", []))

    async def save_one(self, request: web.Request) -> web.StreamResponse:
        return await self._save(request, [request.match_info["name"]])

    async def tag(self, request: web.Request) -> web.Response:
        repo = request.query.get("repo", "")
        if not repo:
            raise ApiError(400, "repository name (repo) is required")
        tag = request.query.get("tag", "")
        self.store.tag(request.match_info["name"], f"{repo}:{tag}" if tag else repo)
        return web.Response(status=201)

    async def delete(self, request: web.Request) -> web.Response:
        return json_response(await self.store.remove(request.match_info["name"],
                                                     force=query_bool(request, "force")))

    async def prune(self, request: web.Request) -> web.Response:
        filters = request_filters(request, PRUNE_FILTERS)
        dangling_only = filters.bool_value("dangling", True)
        return json_response(await self.store.prune(all_images=not dangling_only,
                                                     label_filters=filters.get("label")))

    async def distribution(self, request: web.Request) -> web.Response:
        parse_reference(request.match_info["name"])
        return json_response({"Descriptor": {"mediaType": "", "digest": "", "size": 0}, "Platforms": []})


def add_routes(routes: Routes, store: ImageStore) -> None:
    h = ImageHandlers(store)
    for method, path, handler in (
        ("GET", "/images/json", h.list_images),
        ("POST", "/images/create", h.create),
        ("POST", "/images/load", h.load),
        ("GET", "/images/get", h.save_many),
        ("POST", "/images/prune", h.prune),
        ("GET", "/images/{name:.+}/json", h.inspect),
        ("GET", "/images/{name:.+}/history", h.history),
        ("GET", "/images/{name:.+}/get", h.save_one),
        ("POST", "/images/{name:.+}/tag", h.tag),
        ("DELETE", "/images/{name:.+}", h.delete),
        ("GET", "/distribution/{name:.+}/json", h.distribution),
    ):
        routes.add(method, path, _errors_as_api(handler))
