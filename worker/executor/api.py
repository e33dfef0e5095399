"""Engine API handlers for local volumes: /volumes, /volumes/create, /volumes/{name}, /volumes/prune.

Theory of operation: thin translation between HTTP and `VolumeStore`; filesystem work runs in
a thread. Shapes follow the Engine API: list answers `{"Volumes": [...], "Warnings": []}`,
create answers 201 with the volume, remove 204, a missing volume 404, one in use 409, and
filters arrive as a JSON `filters` query read by engineapi.filters (list: `name`, `label`,
`dangling`, `driver`; prune: `label`, `all`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from engineapi.bodykeys import VOLUME_CREATE
from engineapi.filters import Filters, request_filters
from engineapi.http import ApiError, Routes, json_response, query_bool, read_json
from worker.executor.volumes import VolumeError, VolumeStore

LIST_FILTERS = ("name", "label", "dangling", "driver")
PRUNE_FILTERS = ("label", "all")


def _labels(values: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for v in values:
        key, eq, value = v.partition("=")
        out[key] = value if eq else None
    return out


def _matches(vol: dict[str, Any], users: list[str], filters: Filters, dangling: bool | None) -> bool:
    if (names := filters.get("name")) and not any(f in vol["Name"] for f in names):
        return False
    if (drivers := filters.get("driver")) and vol["Driver"] not in drivers:
        return False
    for key, value in _labels(filters.get("label", [])).items():
        if key not in vol["Labels"] or (value is not None and vol["Labels"][key] != value):
            return False
    return dangling is None or dangling == (not users)


def add_routes(routes: Routes, volumes: VolumeStore) -> None:
    def translate(e: VolumeError) -> ApiError:
        return ApiError(e.status, e.message)

    async def list_volumes(request: web.Request) -> web.Response:
        filters = request_filters(request, LIST_FILTERS)
        dangling = filters.bool_value("dangling", False) if "dangling" in filters else None

        def go() -> list[dict[str, Any]]:
            return [v for v in volumes.list() if _matches(v, volumes.users(v["Name"]), filters, dangling)]

        return json_response({"Volumes": await asyncio.to_thread(go), "Warnings": []})

    async def create_volume(request: web.Request) -> web.Response:
        body = await read_json(request, VOLUME_CREATE)
        if not isinstance(body, dict):
            raise ApiError(400, "volume create body must be a JSON object")
        name = body.get("Name") or ""
        if not isinstance(name, str):
            raise ApiError(400, "Name must be a string")
        if not isinstance(body.get("Driver") or "", str):
            raise ApiError(400, "Driver must be a string")
        for key in ("Labels", "DriverOpts"):
            value = body.get(key) or {}
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ApiError(400, f"{key} must be a map of strings")
        try:
            vol = await asyncio.to_thread(
                volumes.create, name, driver=body.get("Driver") or "local",
                labels=body.get("Labels") or {}, options=body.get("DriverOpts") or {})
        except VolumeError as e:
            raise translate(e) from e
        return json_response(vol, status=201)

    async def inspect_volume(request: web.Request) -> web.Response:
        try:
            vol = await asyncio.to_thread(volumes.inspect, request.match_info["name"])
        except VolumeError as e:
            raise translate(e) from e
        return json_response(vol)

    async def remove_volume(request: web.Request) -> web.Response:
        try:
            await asyncio.to_thread(volumes.remove, request.match_info["name"],
                                    force=query_bool(request, "force"))
        except VolumeError as e:
            raise translate(e) from e
        return web.Response(status=204)

    async def prune_volumes(request: web.Request) -> web.Response:
        filters = request_filters(request, PRUNE_FILTERS)
        all_volumes = any(v.lower() in ("1", "true") for v in filters.get("all", []))
        labels = _labels(filters.get("label", []))
        try:
            report = await asyncio.to_thread(volumes.prune, all_volumes=all_volumes,
                                             labels=labels or None)
        except VolumeError as e:
            raise translate(e) from e
        return json_response(report)

    routes.add("GET", "/volumes", list_volumes)
    routes.add("POST", "/volumes/create", create_volume)
    routes.add("POST", "/volumes/prune", prune_volumes)
    routes.add("GET", "/volumes/{name}", inspect_volume)
    routes.add("DELETE", "/volumes/{name}", remove_volume)
