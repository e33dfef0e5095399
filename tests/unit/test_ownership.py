"""Owned tasks: cancel-and-wait never swallows the caller's cancellation; Raft state is awaited,
not polled; a crashed leadership term is logged with its traceback and started again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path

import pytest

from aio import Backoff, cancel_and_wait
from manager.store import Store
from manager.swarm.runtime import ManagerRuntime
from raft.node import NodeOptions, NodeStopped
from rpc.server import RpcServer


async def test_cancel_and_wait_lets_the_callers_cancellation_through() -> None:
    release = asyncio.Event()

    async def stubborn_child() -> None:
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            await release.wait()     # takes its time to clean up
            raise

    child = asyncio.create_task(stubborn_child())
    await asyncio.sleep(0)           # let the child start

    async def parent() -> None:
        await cancel_and_wait([child])

    waiter = asyncio.create_task(parent())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    waiter.cancel()                  # the parent is cancelled while it waits for its child
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert child.cancelled()


async def test_the_pattern_it_replaces_swallows_the_callers_cancellation() -> None:
    """Why: awaiting a cancelled child under suppress(CancelledError) eats the parent's cancel."""
    release = asyncio.Event()

    async def stubborn_child() -> None:
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            await release.wait()
            raise

    child = asyncio.create_task(stubborn_child())
    await asyncio.sleep(0)

    async def parent() -> str:
        child.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await child
        return "went on as if nothing happened"

    waiter = asyncio.create_task(parent())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    assert await waiter == "went on as if nothing happened"


async def test_cancel_and_wait_returns_what_the_children_died_of() -> None:
    async def crash() -> None:
        raise ValueError("boom")

    crashed = asyncio.create_task(crash())
    idle = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    errors = await cancel_and_wait([crashed, idle, None])
    assert [type(e) for e in errors] == [ValueError]
    assert idle.cancelled()
    assert await cancel_and_wait([]) == []


def test_backoff_grows_to_its_ceiling_and_resets() -> None:
    import random

    b = Backoff(first=1.0, ceiling=4.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(5)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and all(2.0 <= d <= 4.0 for d in delays[2:])
    b.reset()
    assert b.next_delay() <= 1.0


def _runtime(tmp_path: Path, loops: list) -> ManagerRuntime:
    ctx = ssl.create_default_context()    # never dialled: a single member
    server = RpcServer(ctx, identify=lambda _: None)
    return ManagerRuntime(raft_id=1, advertise_addr="127.0.0.1:0", raft_dir=tmp_path / "raft", server=server,
                          client_ssl=lambda: ctx, members={}, bootstrap=True, leader_loops=loops,
                          options=NodeOptions(tick_interval=0.01, election_tick=10))


async def test_raft_state_is_awaited_and_waiters_learn_of_a_stop(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, [])
    run = asyncio.create_task(runtime.run())
    await runtime.ready.wait()
    raft = runtime.raft
    await raft.wait_until(lambda: raft.is_leader, timeout=10)
    with pytest.raises(TimeoutError):
        await raft.wait_until(lambda: False, timeout=0.05)
    never = asyncio.create_task(raft.wait_until(lambda: False))
    await cancel_and_wait([run])
    with pytest.raises(NodeStopped):
        await never


async def test_a_crashed_term_is_logged_with_its_traceback_and_restarted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    attempts = 0
    third = asyncio.Event()

    class CrashingLoop:
        def __init__(self, store: Store) -> None:
            pass

        async def run(self) -> None:
            nonlocal attempts
            attempts += 1
            if attempts >= 3:
                third.set()
                await asyncio.Future()
            raise RuntimeError(f"reconciler bug #{attempts}")

    runtime = _runtime(tmp_path, [CrashingLoop])
    with caplog.at_level(logging.INFO, logger="shoal.manager"):
        run = asyncio.create_task(runtime.run())
        await asyncio.wait_for(third.wait(), 30)
        await cancel_and_wait([run])
    crashes = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(crashes) == 2, [r.getMessage() for r in caplog.records]
    assert all("leadership term crashed" in r.getMessage() and r.exc_info for r in crashes)
    assert "reconciler bug #1" in caplog.text and "reconciler bug #2" in caplog.text
    assert run.cancelled() or run.done()
