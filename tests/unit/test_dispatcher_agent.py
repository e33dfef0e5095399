"""Dispatcher and agent over the real cluster-port RPC (mutual TLS on loopback), on an in-memory
store: sessions, node state, assignments, task lifecycle, status reporting, heartbeat expiry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.store import Store, WriteTx
from model import Node, Task, TaskState, new_id
from tests.support.fake_executor import FakeExecutor
from tests.support.session_env import session_env
from tests.support.wait import async_wait_until

PERIOD_NS = 200_000_000  # 0.2 s heartbeats keep the test fast


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    executor = FakeExecutor()
    async with session_env(tmp_path, executor, period_ns=PERIOD_NS) as e:
        yield {"store": e.store, "node": e.node, "executor": executor, "agent": e.agent,
               "agent_task": e.agent_task, "dispatcher": e.dispatcher}


def node(store: Store, node_id: str) -> Node:
    return store.view(lambda tx: tx.get("nodes", node_id))


def task(store: Store, task_id: str) -> Task:
    return store.view(lambda tx: tx.get("tasks", task_id))


async def add_task(store: Store, node_id: str, desired: TaskState = TaskState.RUNNING) -> str:
    t = Task(id=new_id(), service_id="svc", slot=1, node_id=node_id, desired_state=desired,
             spec={"ContainerSpec": {"Image": "busybox"}}, service_name="web")
    t.status.advance(TaskState.ASSIGNED, "", "assigned")
    await store.update(lambda tx: tx.create(t))
    return t.id


async def set_desired(store: Store, task_id: str, state: TaskState) -> None:
    def fn(tx: WriteTx) -> None:
        t = tx.get("tasks", task_id).copy()
        t.set_desired_state(state)
        tx.update(t)

    await store.update(fn)


async def state_is(store: Store, task_id: str, state: TaskState) -> None:
    async def check() -> bool:
        return task(store, task_id).status.state == state

    await async_wait_until(check, timeout=10, what=f"task {task_id} to be {state.api}")


async def test_session_marks_node_ready_with_its_description(env: dict[str, Any]) -> None:
    store = env["store"]

    async def ready() -> bool:
        return node(store, env["node"]).state == "ready"

    await async_wait_until(ready, what="node ready")
    n = node(store, env["node"])
    assert n.description["Hostname"] == "w1"
    assert n.status["Addr"] == "127.0.0.1"


async def test_task_runs_completes_and_fails_with_exit_code(env: dict[str, Any]) -> None:
    store, ex = env["store"], env["executor"]
    ok = await add_task(store, env["node"])
    await state_is(store, ok, TaskState.RUNNING)
    assert ex.controllers[ok].calls == ["prepare", "start"]
    container = task(store, ok).status.container_status
    assert container is not None and container["PID"] == 4242
    ex.controllers[ok].finish(0)
    await state_is(store, ok, TaskState.COMPLETE)

    bad = await add_task(store, env["node"])
    await state_is(store, bad, TaskState.RUNNING)
    ex.controllers[bad].finish(3)
    await state_is(store, bad, TaskState.FAILED)
    t = task(store, bad)
    assert t.status.err == "task: non-zero exit (3)"
    assert t.status.container_status is not None and t.status.container_status["ExitCode"] == 3


async def test_prepare_failure_rejects_the_task(env: dict[str, Any]) -> None:
    store, ex = env["store"], env["executor"]
    t = Task(id=new_id(), service_id="svc", slot=1, node_id=env["node"], spec={}, service_name="web")
    ex.fail_prepare[t.id] = "No such image: nope:latest"
    await store.update(lambda tx: tx.create(t))
    await state_is(store, t.id, TaskState.REJECTED)
    assert task(store, t.id).status.err == "No such image: nope:latest"


async def test_desired_shutdown_stops_and_removal_deletes(env: dict[str, Any]) -> None:
    store, ex = env["store"], env["executor"]
    tid = await add_task(store, env["node"])
    await state_is(store, tid, TaskState.RUNNING)
    await set_desired(store, tid, TaskState.SHUTDOWN)
    await state_is(store, tid, TaskState.SHUTDOWN)
    assert "shutdown" in ex.controllers[tid].calls
    await store.update(lambda tx: tx.delete("tasks", tid))

    async def removed() -> bool:
        return "remove" in ex.controllers[tid].calls

    await async_wait_until(removed, what="container removal")


async def test_ready_waits_for_desired_running(env: dict[str, Any]) -> None:
    store, ex = env["store"], env["executor"]
    tid = await add_task(store, env["node"], desired=TaskState.READY)
    await state_is(store, tid, TaskState.READY)
    assert "start" not in ex.controllers[tid].calls
    await set_desired(store, tid, TaskState.RUNNING)
    await state_is(store, tid, TaskState.RUNNING)


async def test_node_goes_down_when_heartbeats_stop_and_ready_on_return(env: dict[str, Any]) -> None:
    store = env["store"]

    async def is_state(s: str) -> bool:
        return node(store, env["node"]).state == s

    await async_wait_until(lambda: is_state("ready"), what="node ready")
    env["agent_task"].cancel()
    await async_wait_until(lambda: is_state("down"), timeout=5, what="node down after missed heartbeats")
    assert node(store, env["node"]).status["Message"] == "heartbeat failure"


async def test_closed_connection_marks_node_down_fast_but_live_agent_stays_ready(env: dict[str, Any]) -> None:
    """Heartbeats are every 0.2 s here; raise the period to 60 s (180 s of grace). Once the
    node is on that grace, a node whose connection closes is still down within the wait below,
    which only DISCONNECT_GRACE can explain."""
    import time

    from manager.dispatcher.dispatcher import DISCONNECT_GRACE

    store, dispatcher = env["store"], env["dispatcher"]

    def slow_heartbeats(tx: WriteTx) -> None:
        cluster = tx.all("clusters")[0].copy()
        cluster.spec = {**cluster.spec, "Dispatcher": {"HeartbeatPeriod": 60_000_000_000}}
        tx.update(cluster)

    await store.update(slow_heartbeats)

    async def is_state(s: str) -> bool:
        return node(store, env["node"]).state == s

    async def on_long_grace() -> bool:   # the next heartbeat moved the deadline onto the new grace
        return dispatcher._deadlines.get(env["node"], 0) > time.monotonic() + 60

    await async_wait_until(lambda: is_state("ready"), what="node ready")
    await async_wait_until(on_long_grace, what="the node's deadline on the 180 s grace")
    env["agent_task"].cancel()  # the agent's process ends: its connection closes
    await async_wait_until(lambda: is_state("down"), timeout=DISCONNECT_GRACE + 5, what="node down")


async def test_an_unreachable_node_is_down_at_once(env: dict[str, Any]) -> None:
    """What the RPC server reports when keepalive probes go unanswered: no grace at all. The
    agent stays alive and heartbeats on, so (short of a stall past its grace) nothing else marks
    the node down: the wait's bound only ends a failing run (a 2-s one failed under heavy load)."""
    store, dispatcher = env["store"], env["dispatcher"]

    async def is_state(s: str) -> bool:
        return node(store, env["node"]).state == s

    await async_wait_until(lambda: is_state("ready"), what="node ready")
    changes = store.watch(tables=("nodes",))
    dispatcher.peer_unreachable(env["node"])
    seen: list[str] = []

    async def marked_down() -> bool:   # the live agent comes straight back: watch for the mark
        seen.extend(e.obj.state for e in changes.drain() if e.obj.id == env["node"])
        return "down" in seen

    try:
        await async_wait_until(marked_down, timeout=10, what="node marked down")
    finally:
        changes.close()


async def test_large_assignment_sets_arrive_in_chunks(env: dict[str, Any]) -> None:
    """Hundreds of tasks for one node (more than one chunk) all reach the agent: no single
    message grows with the cluster."""
    from manager.dispatcher.assignments import CHUNK

    store, ex = env["store"], env["executor"]
    count = CHUNK * 2 + 37

    def many(tx: WriteTx) -> None:
        for slot in range(1, count + 1):
            t = Task(id=new_id(), service_id="big", slot=slot, node_id=env["node"], service_name="big",
                     desired_state=TaskState.READY, spec={"ContainerSpec": {"Image": "busybox"}})
            t.status.advance(TaskState.ASSIGNED, "", "assigned")
            tx.create(t)

    await store.update(many)

    async def all_ready() -> bool:
        tasks = store.view(lambda tx: [t for t in tx.all("tasks") if t.service_id == "big"])
        return len(ex.controllers) >= count and all(t.status.state == TaskState.READY for t in tasks)

    await async_wait_until(all_ready, timeout=30, what=f"{count} tasks prepared")
