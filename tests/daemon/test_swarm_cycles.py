"""Swarm transitions over and over against real daemons (issue 15): `swarm init` / `leave --force`
cycles as docker-py's swarm tests run them, and join / leave cycles against a second daemon. No
cycle may wedge the daemon: every call answers within a bound, and afterwards the daemon serves,
leaves and re-initialises normally, and stops on SIGTERM within its shutdown bound.

The wedge these found: a leave cancelled the agent just as its TLS connect to the local manager
completed; Python 3.11's `asyncio.wait_for` then returns the connection instead of raising the
cancellation, so the agent opened a session and ran on, and the leave waited for it forever while
holding the node's lock (every later init, join or leave waited behind it, SIGTERM timed out).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from cli.client import ApiResponseError, DaemonClient
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.wait import async_wait_until, free_port

API_TIMEOUT = 30.0   # a call that takes longer is a wedge


async def call(c: DaemonClient, method: str, path: str, body: Any = None, **params: Any) -> Any:
    async with asyncio.timeout(API_TIMEOUT):
        return (await c.request(method, path, params=params or None, body=body))[1]


def addr(port: int) -> dict[str, str]:
    return {"ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": f"127.0.0.1:{port}"}


# Where a wedge, a crashed component or a transition gone wrong shows: errors of these loggers,
# any error about a cancellation, and raw tracebacks (lines that are not the daemon's JSON).
LIFECYCLE_LOGGERS = ("shoal.swarm", "shoal.manager", "shoal.rpc", "shoal.daemon", "shoal.supervisor",
                     "shoal.agent", "asyncio", "raft.node")


def problems(d: DaemonProcess) -> list[str]:
    """Error lines of the swarm's lifecycle in the daemon's log: none is expected from the cycles.
    (The agent's network programming has its own errors when two daemons share a host's network
    namespace, as in these tests; they are not this test's concern.)"""
    out = []
    for line in d.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if record.get("level") not in ("error", "critical"):
            continue
        if "Cancelled" in line or (record.get("logger") in LIFECYCLE_LOGGERS
                                   and not str(record.get("msg", "")).startswith("programming the node's network")):
            out.append(line)
    return out


async def swarm_state(c: DaemonClient) -> dict[str, Any]:
    return dict((await call(c, "GET", "/info"))["Swarm"])


async def serves_leaves_and_reinits(c: DaemonClient) -> None:
    """The daemon after the cycles: out of the swarm, then a normal init, a refused plain leave,
    a forced one."""
    assert (await swarm_state(c))["LocalNodeState"] == "inactive"
    node_id = await call(c, "POST", "/swarm/init", addr(free_port()))
    nodes = await call(c, "GET", "/nodes")
    assert [n["ID"] for n in nodes] == [node_id]
    with pytest.raises(ApiResponseError) as refused:
        await call(c, "POST", "/swarm/leave")
    assert refused.value.status == 503 and "Use `--force`" in refused.value.message
    await call(c, "POST", "/swarm/leave", force=True)
    assert (await swarm_state(c))["LocalNodeState"] == "inactive"


def stops_on_sigterm(d: DaemonProcess) -> None:
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=15) == 0
    assert "did not stop" not in d.log_text()


async def init_leave_cycles(d: DaemonProcess, cycles: int) -> list[float]:
    """`cycles` of init, a check (or none: every third leave comes straight after the init,
    while the agent is still connecting), leave --force; the same cluster port throughout, as
    the next init rebinds it at once. Returns each cycle's duration."""
    port = free_port()
    took = []
    async with DaemonClient(d.host) as c:
        for i in range(cycles):
            started = time.monotonic()
            node_id = await call(c, "POST", "/swarm/init", addr(port))
            if i % 3:
                state = await swarm_state(c)
                assert (state["LocalNodeState"], state["NodeID"], state["ControlAvailable"]) == (
                    "active", node_id, True), f"cycle {i}"
                if i % 3 == 2:
                    assert [n["ID"] for n in await call(c, "GET", "/nodes")] == [node_id]
            await call(c, "POST", "/swarm/leave", force=True)
            took.append(time.monotonic() - started)
        await serves_leaves_and_reinits(c)
    return took


async def test_a_hundred_init_and_forced_leave_cycles_never_wedge_the_daemon(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--shutdown-timeout", "10") as d:
        took = await init_leave_cycles(d, 100)
        assert max(took) < API_TIMEOUT
        assert problems(d) == []
        stops_on_sigterm(d)


async def test_an_init_that_fails_half_way_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    """Raft cannot start (its directory is taken by a file): the init is answered with the
    reason, nothing of it stays (no cluster port, no state), and the next init works."""
    with running_daemon(tmp_path) as d:
        async with DaemonClient(d.host) as c:
            blocker = d.data_dir / "swarm" / "raft"
            blocker.parent.mkdir(parents=True)
            blocker.write_text("not a directory")
            port = free_port()
            with pytest.raises(ApiResponseError) as failed:
                await call(c, "POST", "/swarm/init", addr(port))
            assert failed.value.status == 500 and "the manager did not start" in failed.value.message
            assert "File exists" in failed.value.message
            assert (await swarm_state(c))["LocalNodeState"] == "inactive"
            assert not (d.data_dir / "swarm").exists()
            node_id = await call(c, "POST", "/swarm/init", addr(port))      # the port was let go
            assert (await swarm_state(c))["NodeID"] == node_id
            await call(c, "POST", "/swarm/leave", force=True)
        stops_on_sigterm(d)


@pytest.mark.slow
async def test_a_thousand_init_and_forced_leave_cycles(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--shutdown-timeout", "10") as d:
        await init_leave_cycles(d, 1000)
        assert problems(d) == []
        stops_on_sigterm(d)


async def join_leave_cycles(manager: DaemonProcess, other: DaemonProcess, workers: int, managers: int) -> None:
    """`other` joins the swarm `manager` leads and leaves it, `workers` times as a worker and
    `managers` times as a manager (a plain leave: the leader takes it out of Raft; every other
    one forced); then the two still form a swarm normally, and both leave and re-init."""
    port = free_port()
    async with DaemonClient(manager.host) as m, DaemonClient(other.host) as o:
        await call(m, "POST", "/swarm/init", addr(port))
        tokens = (await call(m, "GET", "/swarm"))["JoinTokens"]
        other_port = free_port()
        join = {"RemoteAddrs": [f"127.0.0.1:{port}"], **addr(other_port)}
        for i in range(workers + managers):
            as_manager = i >= workers
            await call(o, "POST", "/swarm/join", {**join, "JoinToken": tokens["Manager" if as_manager else "Worker"]})
            state = await swarm_state(o)
            assert (state["LocalNodeState"], state["ControlAvailable"]) == ("active", as_manager), f"cycle {i}"
            if as_manager:
                assert len(await call(o, "GET", "/nodes")) >= 2     # it reads the cluster's state
            await call(o, "POST", "/swarm/leave", force=bool(i % 2))
            assert (await swarm_state(o))["LocalNodeState"] == "inactive"
            assert (await swarm_state(m))["ControlAvailable"] is True, "the manager keeps its swarm"
        # Afterwards: a normal join, seen ready by the manager; the managers' count is back to one.
        await call(o, "POST", "/swarm/join", {**join, "JoinToken": tokens["Worker"]})
        other_id = (await swarm_state(o))["NodeID"]

        async def ready() -> bool:
            nodes = {n["ID"]: n for n in await call(m, "GET", "/nodes")}
            return other_id in nodes and nodes[other_id]["Status"]["State"] == "ready"

        await async_wait_until(ready, timeout=20, what="the joined worker to be ready")
        assert (await swarm_state(m))["Managers"] == 1
        await call(o, "POST", "/swarm/leave")
        await call(m, "POST", "/swarm/leave", force=True)
        await serves_leaves_and_reinits(m)
        await serves_leaves_and_reinits(o)


async def test_join_and_leave_cycles_against_a_second_daemon(tmp_path: Path) -> None:
    with running_daemon(tmp_path, name="m") as m, running_daemon(tmp_path, name="o") as o:
        await join_leave_cycles(m, o, workers=6, managers=4)
        assert problems(m) == [] and problems(o) == []
        stops_on_sigterm(o)
        stops_on_sigterm(m)


@pytest.mark.slow
async def test_many_join_and_leave_cycles_against_a_second_daemon(tmp_path: Path) -> None:
    with running_daemon(tmp_path, name="m") as m, running_daemon(tmp_path, name="o") as o:
        await join_leave_cycles(m, o, workers=50, managers=30)
        assert problems(m) == [] and problems(o) == []
