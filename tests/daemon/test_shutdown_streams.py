"""A daemon stops at once while clients hold long-lived requests open (issue 13): `docker run -d`
leaves a `POST /containers/{id}/wait` open, `docker logs -f` and `docker events` stream; SIGTERM
ends them as dockerd does instead of waiting out the shutdown bound."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from cli.client import DaemonClient
from tests.daemon.test_swarm_cycles import call, problems
from tests.daemon.test_swarm_leave_tasks import IMAGE, load_busybox
from tests.executor.conftest import needs_root_and_runc
from tests.support.daemon import running_daemon

pytestmark = needs_root_and_runc()

STOP_BOUND = 2.5        # seconds from SIGTERM to exit; the shutdown bound is 10 s


async def test_sigterm_ends_open_wait_logs_and_events_at_once(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--shutdown-timeout", "10") as d:
        async with DaemonClient(d.host) as c:
            await load_busybox(c, tmp_path)
            cid = (await call(c, "POST", "/containers/create", {"Image": IMAGE, "Cmd": ["sleep", "1000"]}))["Id"]
            await call(c, "POST", f"/containers/{cid}/start")
        connector = aiohttp.UnixConnector(path=str(d.socket))
        async with aiohttp.ClientSession(connector=connector) as session:
            streams = [await session.post(f"http://d/v1.47/containers/{cid}/wait"),
                       await session.get(f"http://d/v1.47/containers/{cid}/logs",
                                         params={"follow": "1", "stdout": "1"}),
                       await session.get("http://d/v1.47/events")]
            assert [r.status for r in streams] == [200, 200, 200]     # each head is out: the handlers wait
            started = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(d.proc.wait, 10) == 0
            took = time.monotonic() - started
            for r in streams:
                r.close()
    assert took < STOP_BOUND, f"stopped in {took:.1f} s"
    log = d.log_text()
    assert "did not stop within the shutdown bound" not in log and "daemon stopped" in log
    assert problems(d) == []
