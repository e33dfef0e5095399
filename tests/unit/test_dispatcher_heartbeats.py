"""The heartbeat monitor tolerates its own stalls: when the leader's event loop was blocked,
every deadline moves by the stall, so no healthy node is marked down for heartbeats the
manager could not process; a node that really stopped is still marked down afterwards."""

from __future__ import annotations

import asyncio

import pytest

from bench.support.swarm_sim import make_node
from manager.dispatcher import Dispatcher
from manager.dispatcher.heartbeats import HeartbeatDeadlines
from manager.orchestrator.clock import ManualClock
from manager.store import Store
from model import Cluster, new_id
from tests.support.wait import async_wait_until


def test_deadlines_move_by_the_monitors_lateness_before_they_are_checked() -> None:
    monitor = HeartbeatDeadlines(0.2)
    monitor.start(100.0)
    monitor.deadlines.update(a=103.0, b=101.0)
    assert monitor.expired(100.2) == []
    assert monitor.expired(100.4) == []
    # The loop stalled for 10 s: the check due at 100.6 runs at 110.6. Without the stall both
    # deadlines would have passed; with it they are 10 s later.
    assert monitor.expired(110.6) == []
    assert monitor.deadlines == pytest.approx({"a": 113.0, "b": 111.0})
    assert monitor.stalled_s == pytest.approx(10.0)
    assert monitor.expired(110.8) == []
    assert monitor.expired(111.0) == ["b"]  # b stopped heartbeating: caught, 10 s later
    assert monitor.expired(111.2) == [] and set(monitor.deadlines) == {"a"}
    with pytest.raises(ValueError, match="interval"):
        HeartbeatDeadlines(0)


async def test_dispatcher_does_not_mark_nodes_down_after_its_own_stall() -> None:
    clock = ManualClock(start=1000.0)
    store = Store()
    node = make_node("w1")
    await store.update(lambda tx: [tx.create(Cluster(id=new_id(), spec={"Name": "default",
                                                                      "Dispatcher": {"HeartbeatPeriod": 10**9}})),
                                   tx.create(node)])
    dispatcher = Dispatcher(store, clock=clock.now, sleep=clock.sleep)

    def state() -> str:
        return store.view(lambda tx: tx.get("nodes", node.id)).state

    monitor = asyncio.create_task(dispatcher.run())
    try:
        async def started() -> bool:
            return node.id in dispatcher._deadlines
        await async_wait_until(started, what="the monitor to start")
        stalled_before = dispatcher._heartbeats.stalled_s
        await clock.advance(30.0)  # one monitor sleep overshoots by 29.8 s (grace is 3 s)

        async def checked() -> bool:
            return dispatcher._heartbeats.stalled_s > stalled_before
        await async_wait_until(checked, what="the monitor to run after the stall")
        assert state() == "ready"

        for _ in range(20):  # 4 s of regular checks without a heartbeat: now it is down
            await clock.advance(0.2)

        async def down() -> bool:
            return state() == "down"
        await async_wait_until(down, what="the silent node to be marked down")
    finally:
        monitor.cancel()
        await asyncio.gather(monitor, return_exceptions=True)
