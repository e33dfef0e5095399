"""Engine API handlers for this node's containers: `GET /containers/json`, `/containers/{id}/json`,
`/top`, `/stats`, `/logs`, `POST /wait`, `/kill`, `/stop` and `DELETE /containers/{id}`.

Theory of operation: thin translation between HTTP and `LocalContainers` (which reads what the
executor records and acts through the container's controller). Shapes and texts are dockerd's:
404 `No such container: X`, 409 for a container in the wrong state, 400 for bad parameters.
Logs come from the executor's log reader in the multiplexed frames of engineapi.logframes
(the containers have no TTY); stats are one document (`stream=false`: two readings a second
apart, so CPU use can be computed; `one-shot`: one reading) or one document a second until the
client goes away or the container stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from engineapi.filters import request_filters
from engineapi.http import ApiError, Routes, json_response, query_bool
from worker.executor.cgroup_stats import Sample, read_sample, stats_doc
from worker.executor.container_filters import LIST_FILTERS, ListQuery
from worker.executor.container_view import inspect, summaries
from worker.executor.local_containers import LocalContainers, parse_signal
from worker.executor.logs import format_entry, timestamp_seconds

STATS_INTERVAL = 1.0
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW_STREAM = "application/vnd.docker.raw-stream"


def stream_content_type(request: web.Request) -> str:
    """Non-TTY output is typed multiplexed from API 1.42 on, raw before (dockerd)."""
    version = request.match_info.get("api_version")
    if version is None:
        return MULTIPLEXED
    major, minor = (int(p) for p in version.split("."))
    return MULTIPLEXED if (major, minor) >= (1, 42) else RAW_STREAM


def _int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"invalid value for {name}: {raw!r}") from None


def _time_query(request: web.Request, name: str) -> float | None:
    """`since`/`until`: Unix seconds with an optional fraction (docker sends "1700000000.000000000")."""
    raw = request.query.get(name)
    if raw is None or raw in ("", "0"):
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"invalid value for {name}: {raw!r}: must be a Unix timestamp") from None


def add_routes(routes: Routes, containers: LocalContainers,
               exec_ids: Callable[[str], list[str]] = lambda cid: []) -> None:
    async def list_containers(request: web.Request) -> web.Response:
        filters = request_filters(request, LIST_FILTERS)
        views = await containers.views()
        query = ListQuery.parse(filters, views, show_all=query_bool(request, "all"),
                                limit=_int_query(request, "limit") or 0, resolve_image=containers.image_id_of)
        return json_response(summaries(query.select(views), time.time()))

    async def inspect_container(request: web.Request) -> web.Response:
        view, _ = await containers.get(request.match_info["id"])
        doc = inspect(view)
        doc["ExecIDs"] = exec_ids(view.id) or None
        if query_bool(request, "size"):
            doc.update(SizeRw=0, SizeRootFs=0)
        return json_response(doc)

    async def top(request: web.Request) -> web.Response:
        return json_response(await containers.top(request.match_info["id"],
                                                  request.query.get("ps_args", "")))

    async def stats(request: web.Request) -> web.StreamResponse:
        view, ctl = await containers.get(request.match_info["id"])
        stream = query_bool(request, "stream", default=True)
        one_shot = query_bool(request, "one-shot")
        if one_shot and stream:
            raise ApiError(400, "cannot have stream=true and one-shot=true")
        cgroup = ctl.layout.cgroups_path(view.id)

        async def reading() -> Sample | None:
            state = await ctl.state()
            if state.status != "running":
                return None
            return await asyncio.to_thread(read_sample, cgroup, state.pid, time.time())

        first = await reading()
        if not stream:
            previous = None
            if not one_shot and first is not None:
                await asyncio.sleep(STATS_INTERVAL)        # the sampling period, as dockerd's
                previous, first = first, await reading()
            return json_response(stats_doc(view.id, view.name, first, previous))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        previous, current = None, first
        while True:
            line = json.dumps(stats_doc(view.id, view.name, current, previous)) + "\n"
            try:
                await resp.write(line.encode())
            except ConnectionError:
                return resp
            if current is None:
                break
            await asyncio.sleep(STATS_INTERVAL)
            previous, current = current, await reading()
        return resp

    async def logs(request: web.Request) -> web.StreamResponse:
        view, _ = await containers.get(request.match_info["id"])
        if (((view.standalone or {}).get("HostConfig") or {}).get("LogConfig") or {}).get("Type") == "none":
            raise ApiError(501, "configured logging driver does not support reading")
        want_out, want_err = query_bool(request, "stdout"), query_bool(request, "stderr")
        if not want_out and not want_err:
            raise ApiError(400, "Bad parameters: you must choose at least one stream")
        tail_raw = request.query.get("tail", "all")
        tail: int | None = None
        if tail_raw not in ("", "all"):
            try:
                tail = int(tail_raw)
            except ValueError:
                raise ApiError(400, f"invalid value for tail: {tail_raw!r}") from None
            tail = None if tail < 0 else tail
        since, until = _time_query(request, "since"), _time_query(request, "until")
        follow, timestamps = query_bool(request, "follow"), query_bool(request, "timestamps")
        details: dict[str, str] | None = {} if query_bool(request, "details") else None
        tty = view.config.tty        # a TTY container's output is one raw stream, as dockerd sends it
        resp = web.StreamResponse(headers={"Content-Type": RAW_STREAM if tty else stream_content_type(request)})
        await resp.prepare(request)
        try:
            async for entry in containers.executor.logs(view.id, tail=tail, follow=follow, since=since):
                if until is not None and timestamp_seconds(entry.timestamp) > until:
                    break
                if (entry.stream == "stdout" and want_out) or (entry.stream == "stderr" and want_err):
                    await resp.write(format_entry(entry, timestamps=timestamps, details=details, raw=tty))
        except ConnectionError:
            return resp
        return resp

    async def wait(request: web.Request) -> web.StreamResponse:
        ref = request.match_info["id"]
        condition = request.query.get("condition", "")
        view, ctl = await containers.get(ref)        # once: a 404 before the 200 head goes out
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            code, error = await containers.wait(view, ctl, condition)
            body: dict[str, Any] = {"StatusCode": code, "Error": {"Message": error} if error else None}
        except ApiError as e:
            body = {"StatusCode": -1, "Error": {"Message": e.message}}
        try:
            await resp.write(json.dumps(body).encode() + b"\n")
        except ConnectionError:       # the client stopped waiting
            pass
        return resp

    async def kill(request: web.Request) -> web.Response:
        await containers.kill(request.match_info["id"], parse_signal(request.query.get("signal")))
        return web.Response(status=204)

    async def stop(request: web.Request) -> web.Response:
        raw_signal = request.query.get("signal")
        sig = parse_signal(raw_signal) if raw_signal else None
        stopped = await containers.stop(request.match_info["id"], _int_query(request, "t"), sig)
        return web.Response(status=204 if stopped else 304)

    async def remove(request: web.Request) -> web.Response:
        if query_bool(request, "link"):
            raise ApiError(400, "Conflict, cannot remove the default link name of the container")
        await containers.remove(request.match_info["id"], force=query_bool(request, "force"))
        return web.Response(status=204)

    routes.add("GET", "/containers/json", list_containers)
    routes.add("GET", "/containers/{id}/json", inspect_container)
    routes.add("GET", "/containers/{id}/top", top)
    routes.add("GET", "/containers/{id}/stats", stats)
    routes.add("GET", "/containers/{id}/logs", logs)
    routes.add("POST", "/containers/{id}/wait", wait)
    routes.add("POST", "/containers/{id}/kill", kill)
    routes.add("POST", "/containers/{id}/stop", stop)
    routes.add("DELETE", "/containers/{id}", remove)
