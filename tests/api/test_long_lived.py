"""engineapi.http.LongLived over a real unix socket: a handler that has sent its head and waits
(as `wait`, `logs -f`, `events` do) ends when its client goes away, and at once on shutdown;
a request that has not streamed yet is left to finish."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from engineapi.http import LONG_LIVED, Routes, json_response, new_app


async def test_a_gone_client_and_the_shutdown_end_long_lived_requests(tmp_path: Path) -> None:
    ended: dict[str, asyncio.Event] = {"one": asyncio.Event(), "two": asyncio.Event()}
    slow_may_finish, slow_started = asyncio.Event(), asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            await asyncio.Event().wait()       # as a wait on a container that never exits
        finally:
            ended[request.match_info["name"]].set()
        return resp

    async def slow(request: web.Request) -> web.Response:
        slow_started.set()
        await slow_may_finish.wait()
        return json_response({"done": True})

    app = new_app()
    routes = Routes(app)
    routes.add("GET", "/stream/{name}", stream)
    routes.add("GET", "/slow", slow)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    app[LONG_LIVED].watch_disconnects(runner.server)
    sock = tmp_path / "api.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as one:
            resp = await one.get("http://x/stream/one")
            assert resp.status == 200
            assert not ended["one"].is_set()
            resp.close()                       # the client goes away: its handler ends
            async with asyncio.timeout(5):
                await ended["one"].wait()
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as two:
            resp = await two.get("http://x/stream/two")
            slow_call = asyncio.ensure_future(two.get("http://x/slow"))
            async with asyncio.timeout(5):
                await slow_started.wait()
            started = time.monotonic()
            cleanup = asyncio.ensure_future(runner.cleanup())
            async with asyncio.timeout(5):
                await ended["two"].wait()      # the stream ends at once
            assert not slow_call.done()        # the ordinary request was not cut short...
            slow_may_finish.set()
            async with asyncio.timeout(5):
                answer = await slow_call       # ...and answers
                assert await answer.json() == {"done": True}
                await cleanup
            assert time.monotonic() - started < 3
            resp.close()
    finally:
        await runner.cleanup()
