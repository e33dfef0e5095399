"""SwarmNode's ownership rules, in-process (issue 15): stopping components is ordered and bounded
even when a component swallows its cancellation, a crashing component is the node's error and
not the daemon's end, a leave never waits on a transition the node started itself, and leaving
removes the containers of the tasks the agent ran."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from engineapi.http import ApiError
from node import swarm_node
from node.swarm_node import SwarmNode
from tests.support.fake_executor import FakeController, FakeExecutor
from worker.agent import agent as agent_module
from worker.agent.agent import remove_task_containers
from worker.exec import TemporaryError


def make_node(tmp_path: Path, executor: Any = None) -> SwarmNode:
    return SwarmNode(tmp_path, listen_addr="127.0.0.1:0", advertise_addr="", hostname="h",
                     executor=executor or FakeExecutor(), description=dict, leader_loops=[])


async def swallows_one_cancel(started: asyncio.Event) -> None:
    """What an await does under Python 3.11's wait_for when the awaited operation finished in the
    same turn as the cancel: the cancellation is lost, and the code runs on."""
    started.set()
    try:
        await asyncio.Future()
    except asyncio.CancelledError:
        pass
    await asyncio.Future()


async def test_a_component_that_swallowed_its_cancel_is_cancelled_again(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swarm_node, "RECANCEL_AFTER", 0.05)
    node = make_node(tmp_path)
    order: list[str] = []

    async def plain(name: str) -> None:
        try:
            await asyncio.Future()
        finally:
            order.append(name)

    async with asyncio.TaskGroup() as group:
        node._group = group
        started = asyncio.Event()
        first = node._spawn(plain("first"), "first")
        stubborn = node._spawn(swallows_one_cancel(started), "stubborn")
        last = node._spawn(plain("last"), "last")
        await started.wait()
        async with asyncio.timeout(5):
            await node.stop_components()
    assert first.done() and stubborn.done() and last.done()
    assert order == ["last", "first"]          # newest first
    assert node._components == []


async def test_a_component_that_never_stops_is_abandoned_within_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(swarm_node, "RECANCEL_AFTER", 0.05)
    node = make_node(tmp_path)
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    async with asyncio.TaskGroup() as group:
        node._group = group
        task = node._spawn(immortal(), "immortal")
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with caplog.at_level(logging.ERROR, logger="shoal.swarm"):
            await node.stop_components(timeout=0.3)
        assert loop.time() - began < 2
        assert not task.done() and node._components == []
        assert "did not stop within" in caplog.text
        release.set()


async def test_a_crashing_component_is_the_nodes_error_not_the_daemons_end(tmp_path: Path) -> None:
    node = make_node(tmp_path)

    async def crash() -> None:
        raise RuntimeError("boom")

    async with asyncio.TaskGroup() as group:
        node._group = group
        survivor = node._spawn(asyncio.Event().wait(), "survivor")
        crashed = node._spawn(crash(), "crasher")
        await asyncio.wait({crashed})
        assert not survivor.done(), "the group goes on"
        assert node.error == "swarm component crasher failed: boom"
        await node.stop_components()


async def test_a_leave_cancels_a_transition_the_node_started_itself(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    entered = asyncio.Event()

    async def endless_role_change() -> bool:
        entered.set()
        await asyncio.Future()      # e.g. a Raft join that cannot reach a leader
        return True

    attempt = asyncio.ensure_future(node.background(endless_role_change))
    await entered.wait()
    assert node.lock.locked()
    async with asyncio.timeout(5):
        with pytest.raises(ApiError) as err:
            await node.leave(force=True)       # gets the lock: the node is in no swarm here
    assert err.value.status == 503
    assert await attempt is None               # cut short by the leave, not an error
    assert not node.lock.locked()


async def test_removing_the_containers_of_the_tasks_left_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "REMOVE_RETRY", 0.01)
    executor = FakeExecutor()
    for task_id in ("a", "b", "c", "d"):
        executor.controllers[task_id] = ctl = FakeController(task_id)
        ctl.status = "running"
    executor.controllers["b"].fail["remove"] = [TemporaryError("runc busy")] * 6          # retried
    executor.controllers["c"].fail["remove"] = [RuntimeError("shim gone, still running")]  # retried too
    executor.controllers["d"].fail["remove"] = [RuntimeError("disk on fire")] * 10          # given up
    left = await remove_task_containers(executor, ["a", "b", "c", "d", "gone"], timeout=5)
    assert left == ["d"]
    assert {executor.controllers[t].status for t in "abc"} == {"removed"}
    assert executor.controllers["b"].calls.count("remove") == 7
    assert executor.controllers["d"].calls.count("remove") == agent_module.REMOVE_ATTEMPTS


async def test_removing_containers_is_bounded() -> None:
    executor = FakeExecutor()
    ctl = executor.controllers["stuck"] = FakeController("stuck")
    ctl.status = "running"

    async def hangs() -> None:
        await asyncio.Future()

    ctl.remove = hangs  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await remove_task_containers(executor, ["stuck"], timeout=0.2) == ["stuck"]
    assert loop.time() - began < 2

