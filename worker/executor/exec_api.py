"""Engine API handlers for `docker exec`: `POST /containers/{id}/exec`, `POST /exec/{id}/start`
(the hijacked stream), `POST /exec/{id}/resize`, `GET /exec/{id}/json`.

Theory of operation: create checks the body and that the container runs, and registers an
`ExecInstance` (exec_sessions); start runs it once: detached (200, no body; the registry owns
it) or attached, on the connection `engineapi.hijack` takes over (`101 UPGRADED`, raw for a
TTY, multiplexed frames otherwise), which closes once the process has ended and its exit code
is recorded for `GET /exec/{id}/json`. A failure to start the process is written into the stream
(as dockerd writes runc's error) and recorded as exit code 126. The process runs in a task the
registry owns: a TTY client that types the detach keys is let go (`exec_detach`), the process
runs on, and `GET /exec/{id}/json` shows it running.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from aio import cancel_and_wait
from engineapi.bodykeys import EXEC_CONFIG, EXEC_START
from engineapi.hijack import hijack
from engineapi.http import ApiError, Routes, json_response, read_json
from engineapi.logframes import STDERR, frame
from worker.executor.container_view import ContainerView
from worker.executor.containers_api import RAW_STREAM, stream_content_type
from worker.executor.exec_sessions import ExecConfig, ExecError, ExecInstance, ExecRegistry
from worker.executor.local_containers import LocalContainers


def _api(e: ExecError) -> ApiError:
    return ApiError(e.status, e.message)


def _dimension(request: web.Request, name: str) -> int:
    raw = request.query.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"invalid {name} value {raw!r}: must be a positive integer") from None
    if not 0 < value < 65536:
        raise ApiError(400, f"invalid {name} value {raw!r}: must be a positive integer")
    return value


def add_routes(routes: Routes, containers: LocalContainers, registry: ExecRegistry) -> None:
    def emit(action: str, view: ContainerView, instance: ExecInstance, **extra: str) -> None:
        if containers.on_event is not None:
            containers.on_event(action, view, {"execID": instance.id, **extra})

    def lookup(request: web.Request) -> ExecInstance:
        try:
            return registry.get(request.match_info["id"])
        except ExecError as e:
            raise _api(e) from e

    async def create(request: web.Request) -> web.Response:
        ref = request.match_info["id"]
        body = await read_json(request, EXEC_CONFIG)
        view, ctl = await containers.get(ref)
        try:
            config = ExecConfig.from_api(body)
        except ExecError as e:
            raise _api(e) from e
        if view.status != "running":
            raise ApiError(409, f"Container {view.id} is not running")
        instance = ExecInstance(ctl, config)
        registry.add(instance)
        emit(f"exec_create: {' '.join(config.cmd)}", view, instance)
        return json_response({"Id": instance.id}, status=201)

    async def start(request: web.Request) -> web.StreamResponse:
        instance = lookup(request)
        body = await read_json(request, EXEC_START)
        if not isinstance(body, dict):
            raise ApiError(400, "exec start body must be a JSON object")
        size = body.get("ConsoleSize")
        if isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) and n > 0 for n in size):
            instance.config.console_size = (size[0], size[1])
        state = await instance.ctl.state()
        if state.status != "running":
            raise ApiError(409, f"Container {instance.container_id} is not running")
        try:
            instance.claim()
        except ExecError as e:
            raise _api(e) from e
        view, _ = await containers.get(instance.container_id)
        command = " ".join(instance.config.cmd)
        emit(f"exec_start: {command}", view, instance)
        def died(code: int) -> None:
            emit("exec_die", view, instance, exitCode=str(code))

        if body.get("Detach"):
            registry.start_detached(instance, died)
            return web.Response(status=200)
        raw = bool(body.get("Tty"))    # as dockerd: the start request's Tty, not the exec's, picks the framing
        resp, stream = await hijack(request, RAW_STREAM if raw else stream_content_type(request))
        write = stream.write if stream is not None else resp.write
        task = registry.spawn(instance, died, write, stream.read if stream is not None else None, framed=not raw)
        detached = asyncio.ensure_future(instance.detached.wait())
        try:
            await asyncio.wait([task, detached], return_when=asyncio.FIRST_COMPLETED)
            if instance.detached.is_set():
                emit("exec_detach", view, instance)       # the process runs on, the registry owns it
            else:
                await task
        except ExecError as e:
            text = (e.message + "\r\n").encode()
            await write(text if raw else frame(STDERR, text))
        except asyncio.CancelledError:
            if not instance.detached.is_set():
                await cancel_and_wait([task])             # the client went away: the process goes too
            raise
        finally:
            await cancel_and_wait([detached])
            if stream is not None:
                stream.close()
        return resp

    async def resize(request: web.Request) -> web.Response:
        instance = lookup(request)
        height, width = _dimension(request, "h"), _dimension(request, "w")
        try:
            instance.resize(height, width)
        except ExecError as e:
            raise _api(e) from e
        return web.Response(status=200)

    async def inspect(request: web.Request) -> web.Response:
        return json_response(lookup(request).to_api())

    routes.add("POST", "/containers/{id}/exec", create)
    routes.add("POST", "/exec/{id}/start", start)
    routes.add("POST", "/exec/{id}/resize", resize)
    routes.add("GET", "/exec/{id}/json", inspect)
