"""The dashboard's HTTP side: the page, its assets, and a server-sent event stream of the state.

Theory of operation: `GET /events` answers `text/event-stream`. On a manager it sends the whole
state (state.py) at once, from a `view_and_watch`, then again after every store commit that
touches nodes, services or tasks; commits that land while one is being sent fold into the next
send, and sends are at least MIN_INTERVAL apart, so a burst of writes costs a few views, not
one per write. A dropped watch (the stream lagged) starts over from a fresh view. On a node
that is not a manager (or no longer is one) it sends `{"manager": false}`. Every KEEPALIVE
seconds without a change it writes a comment line, which also notices that the node's manager
changed (promotion, demotion, leave): the stream then ends and the browser's EventSource
reconnects to the node as it now is. Nothing here polls the store. Read-only: there is no
handler that writes.

Shutdown: the streams are tracked and cancelled when the server shuts down, so a daemon stop
never waits for open browser tabs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from manager.dashboard.state import dashboard_state
from manager.store import ReadTx, Store, WatchDropped

STATIC = Path(__file__).parent / "static"
KEEPALIVE = 15.0
MIN_INTERVAL = 0.1
WATCHED = ("nodes", "services", "tasks")
WATCH_LIMIT = 5000

StoreOf = Callable[[], Store | None]
LeaderOf = Callable[[], str]


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _follow(response: web.StreamResponse, store: Store, store_of: StoreOf, leader_of: LeaderOf) -> None:
    """Stream `store`'s state until this node's store is another one (or none)."""
    loop = asyncio.get_running_loop()

    def view(tx: ReadTx) -> dict[str, Any]:
        return {"manager": True, **dashboard_state(tx, leader_of())}

    while True:
        state, sub = store.view_and_watch(view, tables=WATCHED, limit=WATCH_LIMIT)
        try:
            await response.write(_event("state", state))
            sent = loop.time()
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE):
                        await sub.wait()
                except TimeoutError:
                    if store_of() is not store:
                        return
                    await response.write(b": keepalive\n\n")
                    continue
                wait = sent + MIN_INTERVAL - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)     # a rate limit: the commits meanwhile fold into this send
                sub.drain()
                await response.write(_event("state", store.view(view)))
                sent = loop.time()
        except WatchDropped:
            continue
        finally:
            sub.close()


async def _stream(request: web.Request, store_of: StoreOf, leader_of: LeaderOf) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(b"retry: 1000\n\n")
    store = store_of()
    if store is None:
        await response.write(_event("state", {"manager": False}))
        await asyncio.sleep(KEEPALIVE)   # a clock, not a poll of data: then end, the browser reconnects and looks again
    else:
        await _follow(response, store, store_of, leader_of)
    return response


def dashboard_app(store_of: StoreOf, leader_of: LeaderOf = lambda: "") -> web.Application:
    """The dashboard of the node whose manager store `store_of()` returns (None: not a manager);
    `leader_of()` names the leader's node ID (the page marks it)."""
    app = web.Application()
    streams: set[asyncio.Task[Any]] = set()

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def events(request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        streams.add(task)
        try:
            return await _stream(request, store_of, leader_of)
        finally:
            streams.discard(task)

    async def close_streams(_: web.Application) -> None:
        for task in list(streams):
            task.cancel()

    app.router.add_get("/", index)
    app.router.add_get("/events", events)
    app.router.add_static("/static", STATIC)
    app.on_shutdown.append(close_streams)
    return app
