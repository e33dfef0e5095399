"""Logs through real sessions: a dispatcher and log broker on an in-memory store, an agent over
the cluster-port RPC (mutual TLS on loopback) whose containers are fakes with scripted logs.
Shows the whole path: `logs` on the session stream, batched `logs.publish`, completion, follow,
cancellation reaching the agent, and a follower-style `logs.subscribe` stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.dispatcher import Dispatcher
from manager.logbroker import ChannelEnded, LogBroker, LogOptions, LogRecord, LogSelector, Subscription
from manager.logbroker.access import RemoteLogStream
from manager.logbroker.rpc import register_logs
from manager.store import Store
from model import Task, TaskState, new_id
from rpc.client import RpcClient
from rpc.server import RpcServer
from tests.support.fake_executor import FakeExecutor
from tests.support.session_env import session_env
from tests.support.wait import async_wait_until
from worker.executor.logs import LogEntry

TS = "2026-01-02T03:04:05.{:09d}+00:00"


async def add_task(store: Store, node_id: str) -> str:
    task = Task(id=new_id(), service_id="svc", slot=1, node_id=node_id, spec={"ContainerSpec": {"Image": "busybox"}},
                service_name="web")
    task.status.advance(TaskState.ASSIGNED, "", "assigned")
    await store.update(lambda tx: tx.create(task))
    return task.id


async def state_is(store: Store, task_id: str, state: TaskState) -> None:
    async def check() -> bool:
        task = store.view(lambda tx: tx.get("tasks", task_id))
        return task is not None and task.status.state == state

    await async_wait_until(check, timeout=10, what=f"task {task_id} to be {state.api}")


class FakeContainers:
    """Containers with scripted logs; a followed log ends once its container `exit`s."""

    def __init__(self) -> None:
        self.lines: dict[str, list[LogEntry]] = {}
        self.exited: set[str] = set()
        self.readers = 0
        self._changed = asyncio.Event()

    def write(self, cid: str, *texts: str, stream: str = "stdout") -> None:
        log = self.lines.setdefault(cid, [])
        for text in texts:
            log.append(LogEntry(TS.format(len(log)), stream, text.encode()))
        self._changed.set()

    def exit(self, cid: str) -> None:
        self.exited.add(cid)
        self._changed.set()

    def get(self, cid: str) -> Any:
        return object() if cid in self.lines else None

    async def logs(self, cid: str, *, tail: int | None = None, follow: bool = False,
                   since: float | None = None) -> AsyncIterator[LogEntry]:
        self.readers += 1
        try:
            log = self.lines[cid]
            start = 0 if tail is None else max(0, len(log) - tail)
            pos = start
            while True:
                while pos < len(log):
                    yield log[pos]
                    pos += 1
                if not follow or cid in self.exited:
                    return
                self._changed.clear()
                await self._changed.wait()
        finally:
            self.readers -= 1


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    containers = FakeContainers()
    brokers: list[LogBroker] = []

    def with_broker(server: RpcServer, dispatcher: Dispatcher, store: Store) -> list[Any]:
        broker = LogBroker(store, dispatcher)
        brokers.append(broker)
        register_logs(server, lambda: broker, lambda: "")
        return [broker.run()]

    async with session_env(tmp_path, FakeExecutor(), period_ns=500_000_000, extras=with_broker,
                           logs=containers) as e:
        await asyncio.wait_for(e.agent.connected.wait(), 10)
        yield {"store": e.store, "node": e.node, "broker": brokers[0], "agent": e.agent, "containers": containers,
               "addr": e.addr, "manager_ctx": e.manager_ctx}


async def drain(sub: Subscription | RemoteLogStream, timeout: float = 10.0) -> list[Any]:
    items: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                items += await sub.get()
            except ChannelEnded:
                return items


async def test_service_logs_come_from_the_agent_in_order_and_the_stream_ends(env: dict[str, Any]) -> None:
    store, containers, broker = env["store"], env["containers"], env["broker"]
    t1, t2 = await add_task(store, env["node"]), await add_task(store, env["node"])
    await state_is(store, t1, TaskState.RUNNING)
    await state_is(store, t2, TaskState.RUNNING)
    containers.write(t1, *[f"one {i}" for i in range(250)])     # more than one batch
    containers.write(t2, "two a")
    containers.write(t2, "two err", stream="stderr")
    sub = broker.subscribe(LogSelector(service_ids=("svc",)), LogOptions())
    items = await drain(sub)
    sub.close()
    by_task: dict[str, list[tuple[str, bytes]]] = {}
    for item in items:
        assert isinstance(item, LogRecord), item
        assert item.node_id == env["node"] and item.service_id == "svc"
        by_task.setdefault(item.task_id, []).append((item.stream, item.message))
    assert by_task[t1] == [("stdout", f"one {i}".encode()) for i in range(250)]
    assert by_task[t2] == [("stdout", b"two a"), ("stderr", b"two err")]

    sub = broker.subscribe(LogSelector(task_ids=(t1,)), LogOptions(tail=2))
    assert [i.message for i in await drain(sub)] == [b"one 248", b"one 249"]
    sub.close()


async def test_follow_streams_new_lines_and_closing_stops_the_agent_reader(env: dict[str, Any]) -> None:
    store, containers, broker, agent = env["store"], env["containers"], env["broker"], env["agent"]
    t1 = await add_task(store, env["node"])
    containers.write(t1, "before")
    sub = broker.subscribe(LogSelector(task_ids=(t1,)), LogOptions(follow=True, tail=1))
    assert [i.message for i in await sub.get(10)] == [b"before"]
    containers.write(t1, "after")
    assert [i.message for i in await sub.get(10)] == [b"after"]
    assert containers.readers == 1
    sub.close()

    async def stopped() -> bool:
        return containers.readers == 0 and agent.logs.active() == 0

    await async_wait_until(stopped, timeout=10, what="the agent to stop reading after logs_cancel")


async def test_a_followed_container_that_exits_ends_its_part(env: dict[str, Any]) -> None:
    store, containers, broker, agent = env["store"], env["containers"], env["broker"], env["agent"]
    t1 = await add_task(store, env["node"])
    containers.write(t1, "x")
    sub = broker.subscribe(LogSelector(task_ids=(t1,)), LogOptions(follow=True))
    assert [i.message for i in await sub.get(10)] == [b"x"]
    containers.write(t1, "last")
    containers.exit(t1)

    async def done() -> bool:
        return not sub.pending and agent.logs.active() == 0

    await async_wait_until(done, timeout=10, what="the task's part to end")
    assert [i.message for i in await sub.get(10)] == [b"last"]
    sub.close()


async def test_a_manager_reads_through_the_leaders_subscribe_stream(env: dict[str, Any]) -> None:
    store, containers = env["store"], env["containers"]
    t1 = await add_task(store, env["node"])
    await state_is(store, t1, TaskState.RUNNING)
    containers.write(t1, "via", "leader")
    async with RpcClient(env["addr"], env["manager_ctx"]()) as client:
        stream = await RemoteLogStream(client, LogSelector(service_ids=("svc",)), LogOptions()).open()
        items = await drain(stream)
        await stream.aclose()
    assert [(i.task_id, i.message) for i in items] == [(t1, b"via"), (t1, b"leader")]

    async with RpcClient(env["addr"], env["manager_ctx"]()) as client:
        stream = await RemoteLogStream(client, LogSelector(task_ids=(t1,)), LogOptions(follow=True)).open()
        assert len(await stream.get(10)) == 2
        await stream.aclose()

    async def forgotten() -> bool:
        return env["broker"].open_subscriptions() == 0

    await async_wait_until(forgotten, timeout=10, what="the leader to close the remote subscription")


async def test_follow_on_a_service_picks_up_a_task_started_later(env: dict[str, Any]) -> None:
    store, containers, broker = env["store"], env["containers"], env["broker"]
    t1 = await add_task(store, env["node"])
    containers.write(t1, "first task")
    sub = broker.subscribe(LogSelector(service_ids=("svc",)), LogOptions(follow=True))
    assert [i.message for i in await sub.get(10)] == [b"first task"]
    t2 = await add_task(store, env["node"])         # scaled up while following
    await state_is(store, t2, TaskState.RUNNING)
    containers.write(t2, "second task")
    got = await sub.get(10)
    assert [(i.task_id, i.message) for i in got] == [(t2, b"second task")]
    sub.close()
