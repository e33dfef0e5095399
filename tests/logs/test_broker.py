"""The log broker on an in-memory store with fake sessions: routing of requests to nodes,
publishing, completion, cancellation, lost nodes, follow picking up new tasks, backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from manager.logbroker import ChannelEnded, LogBroker, LogOptions, LogRecord, LogSelector, LogWarning, Subscription
from manager.store import Store, WriteTx
from model import Task, TaskState, new_id
from rpc.errors import InvalidArgument, PermissionDenied


class FakeSessions:
    """Nodes with open sessions; every message sent to them is recorded."""

    def __init__(self, nodes: set[str]) -> None:
        self.open = set(nodes)
        self.sent: dict[str, list[dict[str, Any]]] = {n: [] for n in nodes}
        self._listeners: list[Callable[[str], None]] = []
        self.message_sent = asyncio.Event()

    def send_to_node(self, node_id: str, message: dict[str, Any]) -> bool:
        if node_id not in self.open:
            return False
        self.sent[node_id].append(message)
        self.message_sent.set()
        return True

    def on_session_closed(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def disconnect(self, node_id: str) -> None:
        self.open.discard(node_id)
        for listener in self._listeners:
            listener(node_id)

    def kinds(self, node_id: str) -> list[str]:
        return [m["kind"] for m in self.sent[node_id]]


async def add_task(store: Store, service: str, slot: int, node: str, state: TaskState = TaskState.RUNNING) -> str:
    task = Task(id=new_id(), service_id=service, slot=slot, node_id=node, service_name="web",
                spec={"ContainerSpec": {"Image": "busybox"}})
    for step in (TaskState.PENDING, TaskState.ASSIGNED, TaskState.ACCEPTED, TaskState.PREPARING, TaskState.READY,
                 TaskState.STARTING, TaskState.RUNNING):
        if step > state:
            break
        task.status.advance(step, "", step.api)

    def create(tx: WriteTx) -> None:
        tx.create(task)

    await store.update(create)
    return task.id


@pytest.fixture
async def env() -> AsyncIterator[tuple[Store, FakeSessions, LogBroker]]:
    store = Store()
    sessions = FakeSessions({"n1", "n2"})
    broker = LogBroker(store, sessions)
    runner = asyncio.create_task(broker.run())
    yield store, sessions, broker
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


def entry(text: str, stream: str = "stdout") -> dict[str, Any]:
    return {"ts": "2026-01-01T00:00:00.000000001+00:00", "stream": stream, "msg": text.encode()}


async def drain(sub: Subscription, timeout: float = 5.0) -> list[Any]:
    items: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                items += await sub.get()
            except ChannelEnded:
                return items


async def test_requests_go_to_the_nodes_running_the_tasks_and_the_stream_ends_when_all_are_done(env: Any) -> None:
    store, sessions, broker = env
    t1 = await add_task(store, "svc", 1, "n1")
    t2 = await add_task(store, "svc", 2, "n2")
    t3 = await add_task(store, "svc", 3, "n1")
    await add_task(store, "svc", 4, "n2", TaskState.ASSIGNED)      # never ran: no log to read
    await add_task(store, "other", 1, "n1")
    sub = broker.subscribe(LogSelector(service_ids=("svc",)), LogOptions(tail=5))
    [m1], [m2] = sessions.sent["n1"], sessions.sent["n2"]
    assert m1["kind"] == "logs" and sorted(m1["tasks"]) == sorted([t1, t3]) and m1["tail"] == 5
    assert m2["tasks"] == [t2] and m2["subscription"] == sub.id and m2["follow"] is False

    assert await broker.publish("n1", {"subscription": sub.id, "task_id": t1, "entries": [entry("a"), entry("b")],
                                       "done": True}) == {"cancelled": False}
    await broker.publish("n2", {"subscription": sub.id, "task_id": t2, "entries": [entry("c", "stderr")],
                                "done": True})
    assert not sub.ended
    await broker.publish("n1", {"subscription": sub.id, "task_id": t3, "entries": [], "done": True})
    items = await drain(sub)
    assert [(i.task_id, i.node_id, i.service_id, i.stream, i.message) for i in items] == [
        (t1, "n1", "svc", "stdout", b"a"), (t1, "n1", "svc", "stdout", b"b"), (t2, "n2", "svc", "stderr", b"c")]
    assert sub.ended and broker.open_subscriptions() == 1
    sub.close()
    assert broker.open_subscriptions() == 0
    assert sessions.kinds("n1") == ["logs"]      # nothing pending: no cancel needed


async def test_a_node_may_only_publish_the_tasks_it_was_asked_for(env: Any) -> None:
    store, _, broker = env
    t1 = await add_task(store, "svc", 1, "n1")
    sub = broker.subscribe(LogSelector(task_ids=(t1,)), LogOptions())
    with pytest.raises(PermissionDenied):
        await broker.publish("n2", {"subscription": sub.id, "task_id": t1, "entries": [entry("x")], "done": True})
    with pytest.raises(InvalidArgument, match="stream must be stdout or stderr"):
        await broker.publish("n1", {"subscription": sub.id, "task_id": t1,
                                    "entries": [{"ts": "", "stream": "bogus", "msg": b""}]})
    with pytest.raises(InvalidArgument):
        broker.subscribe(LogSelector(), LogOptions())
    assert await broker.publish("n1", {"subscription": "nope", "task_id": t1, "entries": []}) == {"cancelled": True}


async def test_closing_cancels_on_the_nodes_and_publishers_learn_it(env: Any) -> None:
    store, sessions, broker = env
    t1 = await add_task(store, "svc", 1, "n1")
    sub = broker.subscribe(LogSelector(service_ids=("svc",)), LogOptions(follow=True))
    sub.close()
    assert sessions.kinds("n1") == ["logs", "logs_cancel"]
    assert sessions.sent["n1"][1]["subscription"] == sub.id
    assert await broker.publish("n1", {"subscription": sub.id, "task_id": t1, "entries": [entry("x")]}) == {
        "cancelled": True}
    assert broker.open_subscriptions() == 0


async def test_unreachable_and_disconnected_nodes_end_with_a_warning_instead_of_hanging(env: Any) -> None:
    store, sessions, broker = env
    t1 = await add_task(store, "svc", 1, "n1")
    t2 = await add_task(store, "svc", 2, "n2")
    t3 = await add_task(store, "svc", 3, "n3")      # n3 has no session
    sub = broker.subscribe(LogSelector(service_ids=("svc",)), LogOptions())
    await broker.publish("n1", {"subscription": sub.id, "task_id": t1, "entries": [entry("one")], "done": True})
    sessions.disconnect("n2")
    items = await drain(sub)
    warnings = [i.message for i in items if isinstance(i, LogWarning)]
    assert any("node n3 is not available" in w and t3 in w for w in warnings), warnings
    assert any("node n2 disconnected" in w and t2 in w for w in warnings), warnings
    assert [i.message for i in items if isinstance(i, LogRecord)] == [b"one"]


async def test_follow_asks_for_tasks_assigned_later_and_ends_only_when_closed(env: Any) -> None:
    store, sessions, broker = env
    t1 = await add_task(store, "svc", 1, "n1")
    sub = broker.subscribe(LogSelector(service_ids=("svc",)), LogOptions(follow=True, tail=0))
    await broker.publish("n1", {"subscription": sub.id, "task_id": t1, "entries": [entry("x")], "done": True})
    assert not sub.ended                  # follow: a service may get new tasks
    t2 = await add_task(store, "svc", 2, "n2", TaskState.ASSIGNED)

    async def asked() -> None:
        while not sessions.sent["n2"]:
            sessions.message_sent.clear()
            await sessions.message_sent.wait()

    await asyncio.wait_for(asked(), 5)
    assert sessions.sent["n2"][0]["tasks"] == [t2] and sessions.sent["n2"][0]["tail"] == 0
    await broker.publish("n2", {"subscription": sub.id, "task_id": t2, "entries": [entry("y")]})
    got = (await sub.get(1)) + (await sub.get(1))
    assert [i.message for i in got] == [b"x", b"y"]
    sub.close()
    assert sessions.kinds("n2") == ["logs", "logs_cancel"]


async def test_a_slow_reader_holds_publishers_back_and_closing_releases_them(env: Any) -> None:
    store, _, broker = env
    t1 = await add_task(store, "svc", 1, "n1")
    sub = broker.subscribe(LogSelector(task_ids=(t1,)), LogOptions(follow=True))
    params = {"subscription": sub.id, "task_id": t1, "entries": [entry("x")]}
    for _ in range(sub.channel._limit):
        assert await broker.publish("n1", params) == {"cancelled": False}
    blocked = asyncio.create_task(broker.publish("n1", params))
    for _ in range(20):  # let the publisher run until it blocks on the full channel
        await asyncio.sleep(0)
    assert not blocked.done()
    await sub.get()                       # room for one more
    assert await asyncio.wait_for(blocked, 5) == {"cancelled": False}
    blocked = asyncio.create_task(broker.publish("n1", params))
    for _ in range(20):  # let the publisher run until it blocks on the full channel
        await asyncio.sleep(0)
    sub.close()
    assert await asyncio.wait_for(blocked, 5) == {"cancelled": True}


async def test_the_end_of_the_term_ends_every_subscription(env: Any) -> None:
    store, _, broker = env
    await add_task(store, "svc", 1, "n1")
    sub = broker.subscribe(LogSelector(service_ids=("svc",)), LogOptions(follow=True))
    runner = asyncio.create_task(broker.run())
    await asyncio.sleep(0)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    items = await drain(sub)
    assert any("leader stepped down" in i.message for i in items if isinstance(i, LogWarning))
