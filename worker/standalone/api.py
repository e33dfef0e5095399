"""Engine API handlers for standalone containers: `POST /containers/create`, `/containers/{id}/start`,
`/attach`, `/resize`, `/restart`, `/rename` and `POST /containers/prune`.

Theory of operation: thin translation between HTTP and `StandaloneContainers`; the rest of the
container API (list, inspect, logs, wait, stop, kill, rm, exec) is worker.executor's and serves
standalone and task containers alike. Answers are dockerd's: create 201 `{"Id", "Warnings"}`,
start 204 (304 if running), restart/rename 204, resize 200; 404 `No such image: X` and `No such
container: X`, 409 for a name in use, 400 for a bad body. Attach takes the connection over
(engineapi.hijack: `101 UPGRADED`; raw for a TTY, multiplexed frames otherwise) and relays the
shim's attach socket until the container's output ends, the client goes away or, on a TTY, types
the detach keys (`detachKeys`, ctrl-p,ctrl-q by default): then the connection is closed, the
container runs on and a `detach` event goes out, as with dockerd.
"""

from __future__ import annotations

import time

from aiohttp import web

from engineapi.bodykeys import CONTAINER_CREATE
from engineapi.filters import request_filters
from engineapi.hijack import hijack
from engineapi.http import ApiError, Routes, json_response, query_bool, read_json
from worker.executor import detach_keys
from worker.executor.containers_api import RAW_STREAM, stream_content_type
from worker.executor.logs import format_entry
from worker.standalone.attach import AttachError, connect, relay
from worker.standalone.containers import StandaloneContainers

PRUNE_FILTERS = ("until", "label", "label!")


def _int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"invalid value for {name}: {raw!r}") from None


def _dimension(request: web.Request, name: str) -> int:
    value = _int_query(request, name)
    if value is None or not 0 <= value < 65536:
        raise ApiError(400, f"invalid {name} value {request.query.get(name)!r}: must be a positive integer")
    return value


def _until(values: list[str]) -> float | None:
    """Prune's `until`: Unix seconds, or a Go duration ago ("10m", "24h")."""
    if not values:
        return None
    raw = values[-1]
    try:
        return float(raw)
    except ValueError:
        pass
    units = {"s": 1, "m": 60, "h": 3600}
    if raw and raw[-1] in units:
        try:
            return time.time() - float(raw[:-1]) * units[raw[-1]]
        except ValueError:
            pass
    raise ApiError(400, f"invalid filter 'until={raw}': give Unix seconds or a duration such as 10m")


def add_routes(app: web.Application, routes: Routes, standalone: StandaloneContainers) -> None:
    containers = standalone.containers

    async def create(request: web.Request) -> web.Response:
        body = await read_json(request, CONTAINER_CREATE)
        cid = await standalone.create(body, request.query.get("name", ""))
        return json_response({"Id": cid, "Warnings": []}, status=201)

    async def start(request: web.Request) -> web.Response:
        started = await standalone.start(request.match_info["id"])
        return web.Response(status=204 if started else 304)

    async def restart(request: web.Request) -> web.Response:
        await standalone.restart(request.match_info["id"], _int_query(request, "t"))
        return web.Response(status=204)

    async def rename(request: web.Request) -> web.Response:
        await standalone.rename(request.match_info["id"], request.query.get("name", ""))
        return web.Response(status=204)

    async def resize(request: web.Request) -> web.Response:
        view, ctl = await containers.get(request.match_info["id"])
        standalone.resize_tty(ctl, view, _dimension(request, "h"), _dimension(request, "w"))
        return web.Response(status=200)

    async def prune(request: web.Request) -> web.Response:
        filters = request_filters(request, PRUNE_FILTERS)
        labels = filters.get("label", []) + [w.replace("=", "!=", 1) if "=" in w else w + "!="
                                             for w in filters.get("label!", [])]
        return json_response(await standalone.prune(_until(filters.get("until", [])), labels))

    async def attach(request: web.Request) -> web.StreamResponse:
        view, _ = await containers.get(request.match_info["id"])
        live, logs = query_bool(request, "stream"), query_bool(request, "logs")
        if not live and not logs:
            raise ApiError(400, "Bad parameters: you must choose at least one stream")
        if live and view.status not in ("running", "created") and view.standalone is not None:
            view = await standalone.recreate(view.id)     # `docker start -a`: attach, then start
        if live and view.status not in ("running", "created"):
            raise ApiError(409, "You cannot attach to a stopped container, start it first")
        want_in = query_bool(request, "stdin") and view.config.stdin
        want_out, want_err = query_bool(request, "stdout"), query_bool(request, "stderr")
        keys_text = request.query.get("detachKeys") or detach_keys.DEFAULT
        try:
            keys = detach_keys.parse(keys_text)
        except ValueError:
            raise ApiError(400, f"Invalid detach keys ({keys_text}) provided") from None
        sock = None
        if live:
            try:
                sock = await connect(containers.executor.layout.socket_dir, view.id)
            except AttachError as e:
                raise ApiError(409, str(e)) from None
        tty = view.config.tty
        try:
            resp, stream = await hijack(request, RAW_STREAM if tty else stream_content_type(request))
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        containers.emit("attach", view)
        write = stream.write if stream is not None else resp.write
        try:
            if logs:        # what it wrote so far, from its log, before what it writes next
                async for entry in containers.executor.logs(view.id):
                    if (entry.stream == "stderr" and want_err) or (entry.stream == "stdout" and want_out):
                        await write(entry.message + b"\n" if tty else format_entry(entry))
            if sock is not None:
                detached = await relay(sock, write, stream.read if stream is not None and want_in else None,
                                       tty=tty, stdout=want_out, stderr=want_err, detach_keys=keys,
                                       client_gone=stream.closed if stream is not None else None)
                if detached:
                    containers.emit("detach", view)
        except ConnectionError:
            pass
        finally:
            if sock is not None:
                sock.close()
            if stream is not None:
                stream.close()
        return resp

    async def start_watching(_: web.Application) -> None:
        await standalone.restore()

    async def stop_watching(_: web.Application) -> None:
        await standalone.close()

    app.on_startup.append(start_watching)
    app.on_cleanup.append(stop_watching)
    routes.add("POST", "/containers/create", create)
    routes.add("POST", "/containers/prune", prune)
    routes.add("POST", "/containers/{id}/start", start)
    routes.add("POST", "/containers/{id}/restart", restart)
    routes.add("POST", "/containers/{id}/rename", rename)
    routes.add("POST", "/containers/{id}/resize", resize)
    routes.add("POST", "/containers/{id}/attach", attach)

