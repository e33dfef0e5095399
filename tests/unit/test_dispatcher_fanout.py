"""The dispatcher's assignment fan-out, in-process: each session gets exactly the events of its
own node (a task moving between nodes is a remove on one and an update on the other), manager
changes reach every session, and a session whose watch lagged and was dropped gets a fresh
complete set."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from bench.support.swarm_sim import make_node
from manager.dispatcher import Dispatcher
from manager.store import Store, WriteTx
from model import StoreObject, Task, TaskState, new_id

PARAMS = {"description": {"Hostname": "h", "Platform": {"OS": "linux", "Architecture": "x86_64"}},
          "addr": "127.0.0.1"}


async def next_message(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.wait_for(anext(stream), 5)


async def open_session(dispatcher: Dispatcher, node_id: str) -> tuple[AsyncIterator[dict[str, Any]], list[dict]]:
    """Open a session and read its opening: hello, the complete set, managers, own node."""
    stream = dispatcher.session(node_id, PARAMS)
    hello = await next_message(stream)
    assert hello["kind"] == "session"
    complete: list[dict] = []
    while True:
        message = await next_message(stream)
        if message["kind"] == "assignments":
            assert message["type"] == "complete"
            complete.extend(message["tasks"])
        elif message["kind"] == "node":
            return stream, complete


def changes_of(message: dict[str, Any]) -> list[tuple[str, str]]:
    assert message["kind"] == "assignments" and message["type"] == "incremental", message
    return [(c["action"], c["task"]["id"] if c["action"] == "update" else c["task_id"])
            for c in message["changes"]]


def make_task(node_id: str = "") -> Task:
    task = Task(id=new_id(), service_id="svc", slot=1, node_id=node_id, spec={"ContainerSpec": {"Image": "x"}})
    if node_id:
        task.status.advance(TaskState.ASSIGNED, "", "assigned")
    return task


async def move(store: Store, task_id: str, node_id: str) -> None:
    def fn(tx: WriteTx) -> None:
        task = tx.get("tasks", task_id).copy()
        task.node_id = node_id
        tx.update(task)

    await store.update(fn)


async def two_nodes(store: Store) -> tuple[str, str]:
    a, b = make_node("a"), make_node("b")
    await store.update(lambda tx: [tx.create(a), tx.create(b)])
    return a.id, b.id


async def test_each_session_gets_only_its_nodes_tasks_and_moves_split_into_remove_and_update() -> None:
    store = Store()
    a, b = await two_nodes(store)
    before = make_task(a)
    await store.update(lambda tx: tx.create(before))
    dispatcher = Dispatcher(store)
    stream_a, complete_a = await open_session(dispatcher, a)
    stream_b, complete_b = await open_session(dispatcher, b)
    async with contextlib.aclosing(stream_a), contextlib.aclosing(stream_b):  # type: ignore[type-var]
        assert [t["id"] for t in complete_a] == [before.id] and complete_b == []

        moving = make_task()  # unassigned: concerns no session
        await store.update(lambda tx: tx.create(moving))
        await move(store, moving.id, a)
        assert changes_of(await next_message(stream_a)) == [("update", moving.id)]

        await move(store, moving.id, b)
        assert changes_of(await next_message(stream_a)) == [("remove", moving.id)]
        assert changes_of(await next_message(stream_b)) == [("update", moving.id)]

        # B saw nothing of A's tasks: its next message is about its own new task only.
        only_b = make_task(b)
        await store.update(lambda tx: [tx.create(make_task(a)), tx.create(only_b)])
        assert changes_of(await next_message(stream_b)) == [("update", only_b.id)]
        assert dispatcher._assignments.subscribers() == 2
    assert dispatcher._assignments.subscribers() == 0  # closed sessions leave the fan-out


async def test_manager_changes_reach_every_session() -> None:
    store = Store()
    a, b = await two_nodes(store)
    dispatcher = Dispatcher(store)
    stream_a, _ = await open_session(dispatcher, a)
    stream_b, _ = await open_session(dispatcher, b)
    async with contextlib.aclosing(stream_a), contextlib.aclosing(stream_b):  # type: ignore[type-var]
        manager = make_node("m", role="manager")
        manager.manager_status = {"Addr": "127.0.0.1:2377", "Leader": True}
        await store.update(lambda tx: tx.create(manager))
        for stream in (stream_a, stream_b):
            message = await next_message(stream)
            assert message == {"kind": "managers", "managers": [{"node_id": manager.id, "addr": "127.0.0.1:2377"}]}


async def test_a_lagging_session_is_dropped_and_resent_the_complete_set() -> None:
    store = Store(watch_limit=3)
    a, b = await two_nodes(store)
    dispatcher = Dispatcher(store)
    stream, _ = await open_session(dispatcher, a)
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        made = [make_task(a) for _ in range(8)]
        for task in made:  # one entry each, unread: the session's queue overflows
            def create(tx: WriteTx, t: Task = task) -> StoreObject:
                return tx.create(t)
            await store.update(create)
        await store.update(lambda tx: tx.create(make_task(b)))  # another node's: never sent here
        seen: set[str] = set()
        while True:
            message = await next_message(stream)
            if message.get("type") == "complete":
                complete = {t["id"] for t in message["tasks"]}
                break
            seen.update(task_id for _, task_id in changes_of(message))
        assert complete == {t.id for t in made}
        assert seen < complete  # the increments before the drop were a part of it
        assert dispatcher._assignments.subscribers() == 1  # the resynced stream subscribed again


async def test_the_nodes_own_status_coming_back_is_not_sent_but_a_desired_state_change_is() -> None:
    store = Store()
    a, _ = await two_nodes(store)
    task = make_task(a)
    await store.update(lambda tx: tx.create(task))
    dispatcher = Dispatcher(store)
    stream, complete = await open_session(dispatcher, a)
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        assert [t["id"] for t in complete] == [task.id]

        def edit(change: Any) -> Any:
            def fn(tx: WriteTx) -> None:
                current = tx.get("tasks", task.id).copy()
                change(current)
                tx.update(current)
            return fn

        queued = dispatcher._assignments._by_key[a]
        await store.update(edit(lambda t: t.status.advance(TaskState.RUNNING, "t", "started")))  # an echo
        assert [sub.pending() for sub in queued] == [0]
        await store.update(edit(lambda t: t.set_desired_state(TaskState.SHUTDOWN)))
        assert [sub.pending() for sub in queued] == [1]
        message = await next_message(stream)
        assert changes_of(message) == [("update", task.id)]
        sent = message["changes"][0]["task"]
        assert sent["desired_state"] == int(TaskState.SHUTDOWN) and sent["status"][0] == int(TaskState.RUNNING)
