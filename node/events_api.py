"""`GET /events` (`docker events`) on a node: the node's own events (its containers, from the
`EventBus`) and, on a manager, the swarm's (services, nodes, secrets, configs, networks, from
the store's watch), filtered as dockerd filters them and streamed as they happen.

Theory of operation: the handler subscribes to the bus (its history replays a `since` in the
past; swarm events are not kept, so only those from the subscription on are streamed) and, when
the node is a manager, runs one task forwarding the store's events into the same subscriber;
the task belongs to the request and is cancelled when the stream ends: at `until`, when the
client goes away, or when the subscriber was dropped for lagging. Each event is one JSON
document followed by a newline, flushed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

from aiohttp import web

from engineapi.events import FILTER_KEYS, EventBus, Subscriber, include
from engineapi.filters import request_filters
from engineapi.http import ApiError, Routes
from manager.api.swarm_events import swarm_events
from manager.store import Store


def _timestamp(request: web.Request, name: str) -> float | None:
    """Unix seconds with an optional fraction, as the CLI sends `--since`/`--until`."""
    raw = request.query.get(name, "")
    if raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"invalid value for {name}: {raw!r}: must be a Unix timestamp") from None


async def _forward(store: Store, sub: Subscriber) -> None:
    async for msg in swarm_events(store):
        sub.offer(msg)


def add_routes(routes: Routes, bus: EventBus, manager_store: Callable[[], Store | None]) -> None:
    async def events(request: web.Request) -> web.StreamResponse:
        filters = request_filters(request, FILTER_KEYS)
        since, until = _timestamp(request, "since"), _timestamp(request, "until")
        if since is not None and until is not None and until < since:
            raise ApiError(400, "`since` time must be before `until` time")
        history, sub = bus.subscribe()
        store = manager_store()
        forwarding = asyncio.ensure_future(_forward(store, sub)) if store is not None else None
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
            if forwarding is not None:
                forwarding.cancel()
                await asyncio.gather(forwarding, return_exceptions=True)
        return resp

    routes.add("GET", "/events", events)
