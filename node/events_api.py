"""`GET /events` (`docker events`) on a node: the node's own events (its containers, from the
`EventBus`) and, on a manager, the swarm's (services, nodes, secrets, configs, networks, from
the store's watch), filtered as dockerd filters them and streamed as they happen.

Theory of operation: both kinds go through the node's one `EventBus`, so they share its bounded
in-memory history (engineapi.events `HISTORY`: the last 1024 events; dockerd keeps 256) and a
`since` in the past replays swarm events too. The swarm's come from `record_swarm_events`, a
watch of the store that the swarm node runs beside each manager runtime (it starts with the
runtime and is cancelled with it: a worker records none; a watch dropped for lagging is
renewed, the events it missed are not replayed). The handler subscribes to the bus (its history
and the subscription atomically) and streams until `until`, until the client goes away, or until
the subscriber is dropped for lagging. Each event is one JSON document followed by a newline,
flushed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from engineapi.events import FILTER_KEYS, EventBus, include
from engineapi.filters import request_filters
from engineapi.http import ApiError, Routes
from manager.api.swarm_events import KINDS, to_message
from manager.store import Store, WatchDropped


def _timestamp(request: web.Request, name: str) -> float | None:
    """Unix seconds with an optional fraction, as the CLI sends `--since`/`--until`."""
    raw = request.query.get(name, "")
    if raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"invalid value for {name}: {raw!r}: must be a Unix timestamp") from None


def record_swarm_events(bus: EventBus) -> Callable[[Store], Awaitable[None]]:
    """What a swarm node runs on each manager store: its events into `bus`, for as long as the
    manager runs."""
    async def record(store: Store) -> None:
        while True:
            sub = store.watch(tables=tuple(KINDS))
            try:
                while True:
                    try:
                        event = await sub.get()
                    except WatchDropped:
                        break                     # lagged: a new watch from now on
                    except StopAsyncIteration:
                        return                    # closed with the store
                    msg = to_message(event)
                    if msg is not None:
                        bus.publish(msg)
            finally:
                sub.close()
    return record


def add_routes(routes: Routes, bus: EventBus) -> None:
    async def events(request: web.Request) -> web.StreamResponse:
        filters = request_filters(request, FILTER_KEYS)
        since, until = _timestamp(request, "since"), _timestamp(request, "until")
        if since is not None and until is not None and until < since:
            raise ApiError(400, "`since` time must be before `until` time")
        history, sub = bus.subscribe()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await resp.prepare(request)

            async def send(msg: dict[str, object]) -> None:
                if include(filters, msg):
                    await resp.write(json.dumps(msg).encode() + b"\n")

            if since is not None:
                for past in history:
                    if since <= int(past["timeNano"]) / 1e9 <= (until if until is not None else time.time()):
                        await send(past)
            if until is not None and until <= time.time():
                return resp
            deadline = None if until is None else asyncio.get_running_loop().time() + (until - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    while (msg := await sub.next()) is not None:
                        await send(msg)
        except ConnectionError:
            pass
        finally:
            sub.close()
        return resp

    routes.add("GET", "/events", events)
