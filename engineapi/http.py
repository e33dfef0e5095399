"""HTTP plumbing shared by every Engine API handler.

Theory of operation: every route is registered twice, bare and under a `/v{major}.{minor}`
prefix, because the docker CLI pings `/_ping` unversioned and then uses `/v1.NN/...`. A
middleware checks the requested version against the supported range, stamps the headers every
Engine API response carries, and turns `ApiError` (and stray exceptions) into the
`{"message": ...}` body with a Content-Type of exactly `application/json`, which the docker CLI
compares for equality.

Long-lived requests (wait, attach, logs --follow, events, stats stream, exec start, a pull's
progress) are the ones whose handler has sent the response head and still runs. `LongLived`
records their tasks when the head goes out; as dockerd does, they end at once when the daemon
shuts down (`on_shutdown`, before aiohttp waits for in-flight requests) and, once a server's
connection losses are watched (`watch_disconnects`), when their client goes away; a waiter no
client reads is not kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engineapi.bodykeys import Shape, canonical_keys

API_VERSION = "1.47"
MIN_API_VERSION = "1.24"
SERVER_VERSION = "0.1.0"
SERVER_HEADER = f"shoal/{SERVER_VERSION} (linux)"
MAX_JSON_DEPTH = 100   # Engine API bodies nest about 8 levels; deeper is an attack or a mistake

log = logging.getLogger("shoal.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered as `{"message": ...}` with the given HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON body with Content-Type exactly `application/json` (no charset)."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, content_type="application/json"
    )


def error_response(status: int, message: str) -> web.Response:
    return json_response({"message": message}, status=status)


def _version_tuple(v: str) -> tuple[int, int]:
    major, minor = v.split(".")
    return int(major), int(minor)


def check_api_version(version: str | None) -> None:
    if version is None:
        return
    asked = _version_tuple(version)
    if asked > _version_tuple(API_VERSION):
        raise ApiError(
            400,
            f"client version {version} is too new. Maximum supported API version is {API_VERSION}",
        )
    if asked < _version_tuple(MIN_API_VERSION):
        raise ApiError(
            400,
            f"client version {version} is too old. Minimum supported API version is "
            f"{MIN_API_VERSION}, please upgrade your client to a newer version",
        )


def stamp_headers(resp: web.StreamResponse) -> None:
    resp.headers["Api-Version"] = API_VERSION
    resp.headers["Ostype"] = "linux"
    resp.headers["Server"] = SERVER_HEADER
    resp.headers["Docker-Experimental"] = "false"


class LongLived:
    """The handler tasks of the requests streaming a response, keyed by their connection."""

    def __init__(self) -> None:
        self._tasks: dict[object, asyncio.Task[Any]] = {}
        self._closing = False

    def track(self, request: web.Request) -> None:
        task = asyncio.current_task()
        if task is None:
            return
        if self._closing:           # the head of a stream that began as the daemon stops
            task.cancel()
            return
        key = request.protocol
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None) if self._tasks.get(key) is task else None)

    def client_gone(self, connection: object) -> None:
        task = self._tasks.pop(connection, None)
        if task is not None:
            task.cancel()

    async def close(self, _: web.Application | None = None) -> None:
        """End every long-lived request (an `on_shutdown` hook) and wait until they ended."""
        self._closing = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def watch_disconnects(self, server: web.Server) -> None:
        """Cancel a long-lived request once its client's connection is lost: wraps `server`'s
        per-connection `connection_lost` (aiohttp itself only cancels every handler or none)."""
        inner = server.connection_lost

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            inner(handler, exc)
            self.client_gone(handler)

        server.connection_lost = connection_lost  # type: ignore[method-assign]


LONG_LIVED = web.AppKey("long_lived", LongLived)


async def _on_prepare(request: web.Request, resp: web.StreamResponse) -> None:
    stamp_headers(resp)
    if not isinstance(resp, web.Response) and LONG_LIVED in request.app:
        request.app[LONG_LIVED].track(request)     # a stream: its handler runs on after the head


@web.middleware
async def engine_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        check_api_version(request.match_info.get("api_version"))
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.message)
    except web.HTTPException as e:
        if e.status >= 400:
            return error_response(e.status, e.reason or "error")
        raise
    except json.JSONDecodeError as e:
        return error_response(400, f"invalid JSON body: {e}")
    except Exception as e:
        status = getattr(e, "http_status", None)
        if isinstance(status, int):  # a domain error that knows its HTTP status (store, RPC, specs)
            return error_response(status, str(e))
        # a bug: answer 500 with the message, log the traceback
        log.exception("handler %s %s failed", request.method, request.path)
        return error_response(500, f"internal error: {e}")


class Routes:
    """Registers each handler both bare and under the `/v1.NN` prefix."""

    def __init__(self, app: web.Application) -> None:
        self._router = app.router

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._router.add_route(method, path, handler)
        self._router.add_route(method, r"/v{api_version:\d+\.\d+}" + path, handler)


def new_app(*extra_middlewares: Any) -> web.Application:
    """An Engine API app; `extra_middlewares` run inside the error/version middleware."""
    app = web.Application(middlewares=[engine_middleware, *extra_middlewares], client_max_size=64 * 1024**2)
    app.on_response_prepare.append(_on_prepare)
    app[LONG_LIVED] = LongLived()
    app.on_shutdown.append(app[LONG_LIVED].close)
    return app


async def read_json(request: web.Request, shape: Shape = None) -> Any:
    """The request body as JSON; an empty body is an empty object. Bad JSON is a 400. With a
    `shape` (engineapi.bodykeys), known keys are matched whatever their case, as dockerd does."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"invalid JSON body: {e}") from e
    except RecursionError:
        raise ApiError(400, f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels") from None
    if json_depth(body) > MAX_JSON_DEPTH:
        raise ApiError(400, f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels")
    return canonical_keys(body, shape) if shape is not None else body


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """Engine API boolean query values: false only for "", 0, no, false, none."""
    raw = request.query.get(name)
    if raw is None:
        return default
    return raw.strip().lower() not in ("", "0", "no", "false", "none")


def machine_arch() -> str:
    return platform.machine() or "x86_64"


def go_bool(request: web.Request, name: str) -> bool:
    """A query boolean parsed as Go's strconv.ParseBool (status, insertDefaults, rotate*)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return False
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ApiError(400, f'invalid value for {name}: strconv.ParseBool: parsing "{raw}": invalid syntax')
