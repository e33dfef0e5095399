"""Drain, never drop (manager/dispatcher/drain.py), with the dispatcher over the in-memory store: the
change that tells a node to stop a task in rotation reaches it only once every node using the
task's networks acknowledged the networks message that took the task out of their rotation.

Nodes without a session, or whose session closes or is superseded, or that are declared down
(heartbeats, on a manual clock) are not waited for; without acknowledgements the stop goes after
the bound (a manual clock), with a WARNING naming the nodes; the stream's other changes are not
delayed; tasks without networks are not held; a held task that is removed meanwhile ends removed,
and a resync meanwhile keeps the agent running it. "Not delivered yet" is shown by the stream's
next message being another one, never by a sleep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from manager.dispatcher import Dispatcher
from manager.dispatcher.dispatcher import MONITOR_INTERVAL
from manager.orchestrator.clock import ManualClock
from manager.store import Store
from model import Node, Task, TaskState, new_id
from rpc.errors import FailedPrecondition, InvalidArgument
from tests.support.wait import async_wait_until
from tests.unit.test_dispatcher_fanout import changes_of, next_message
from tests.unit.test_network_push import (
    Swarm,
    advance,
    applied,
    desire,
    host,
    names,
    opening,
    params,
    pushing,
    put,
    session_of,
    task_of,
)

Stream = AsyncIterator[dict[str, Any]]


class Session:
    """One node's session stream, read by the test as its agent would."""

    def __init__(self, dispatcher: Dispatcher, node: Node) -> None:
        self.dispatcher = dispatcher
        self.node = node
        self.stream: Stream = dispatcher.session(node.id, params(node))
        self.hello: dict[str, Any] = {}
        self.last_networks: dict[str, Any] = {}

    async def open(self) -> Session:
        messages = await opening(self.stream)
        self.hello = messages[0]
        self.last_networks = next(m for m in messages if m["kind"] == "networks")
        return self

    async def next(self) -> dict[str, Any]:
        message = await next_message(self.stream)
        if message["kind"] == "networks":
            self.last_networks = message
        return message

    async def networks(self) -> dict[str, Any]:
        """The next message, which must be a networks message."""
        message = await self.next()
        assert message["kind"] == "networks", message
        return message

    async def ack(self, message: dict[str, Any] | None = None) -> None:
        await applied(self.dispatcher, self.node.id, self.hello, message or self.last_networks)

    async def close(self) -> None:
        await self.stream.aclose()  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def sessions(dispatcher: Dispatcher, *nodes: Node) -> AsyncIterator[list[Session]]:
    opened: list[Session] = []
    try:
        for node in nodes:
            opened.append(await Session(dispatcher, node).open())
        yield opened
    finally:
        for session in opened:
            await session.close()


def tasks_in(message: dict[str, Any], network: str = "net") -> list[str]:
    view = next(v for v in message["networks"] if v["name"] == network)
    return sorted(t["id"] for svc in view["services"] for t in svc["tasks"])


def desired_of(message: dict[str, Any], task_id: str) -> TaskState:
    change = next(c for c in message["changes"] if c["action"] == "update" and c["task"]["id"] == task_id)
    return Task.from_record(change["task"]).desired_state


async def three_nodes() -> tuple[Swarm, Node]:
    """The test swarm plus C, a node with only its ingress endpoint."""
    s = await Swarm().seed()
    c = host("c", "198.18.0.3", (s.ingress, "10.0.0.4/24"))
    await put(s.store, c)
    return s, c


async def test_the_stop_goes_only_once_every_node_using_the_network_acknowledged_and_others_flow_on() -> None:
    s, c = await three_nodes()
    on_a = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    on_b = task_of(s.web, 2, s.b.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING)
    await put(s.store, on_a, on_b)
    dispatcher = Dispatcher(s.store)
    async with pushing(dispatcher) as push, sessions(dispatcher, s.a, s.b, c) as (a, b, _):
        assert a.last_networks["seq"] == 1      # each session numbers its networks messages from 1
        for session in (a, b):
            await session.ack()
        await desire(s.store, on_a.id, TaskState.SHUTDOWN)
        message = await a.networks()            # A's own rotation first ...
        assert message["seq"] == 2 and tasks_in(message) == [on_b.id]
        assert tasks_in(await b.networks()) == [on_b.id]   # ... and B's: A's task is out everywhere
        await a.ack()

        later = task_of(s.web, 3, s.a.id)       # not held: A's other assignments flow on
        await put(s.store, later)
        assert changes_of(await a.next()) == [("update", later.id)]
        assert push.drain.pending() == 1 and push.drain.held == 1

        await b.ack()                            # the last node using net: now A is told to stop
        message = await a.next()
        assert changes_of(message) == [("update", on_a.id)] and desired_of(message, on_a.id) is TaskState.SHUTDOWN
        assert push.drain.pending() == 0 and push.drain.expired == 0
        assert session_of(dispatcher, c.id).acked == 0   # C does not use net and was not waited for


async def test_ingress_tasks_wait_for_every_node_and_seqs_never_run_ahead() -> None:
    s, c = await three_nodes()
    task = task_of(s.web, 1, s.a.id, (s.ingress, "10.0.0.10/24"), state=TaskState.RUNNING)
    await put(s.store, task)
    dispatcher = Dispatcher(s.store)
    async with pushing(dispatcher) as push, sessions(dispatcher, s.a, s.b, c) as (a, b, cc):
        await desire(s.store, task.id, TaskState.SHUTDOWN)
        for session in (a, b, cc):
            assert tasks_in(await session.networks(), "ingress") == []
        async with _reading(a) as stop:
            await async_wait_until(_holding(push), what="the hold of A's task")
            await a.ack()
            await b.ack()
            await dispatcher.networks_applied(c.id, {"session_id": cc.hello["session_id"], "seq": 1})
            assert push.drain.pending() == 1 and not stop.done()   # C applied its complete set only
            await dispatcher.networks_applied(c.id, {"session_id": cc.hello["session_id"], "seq": 99})
            assert session_of(dispatcher, c.id).acked == 2          # never past what it was sent
            async with asyncio.timeout(5):
                assert changes_of(await stop) == [("update", task.id)]

        with pytest.raises(FailedPrecondition):
            await dispatcher.networks_applied(c.id, {"session_id": "stale", "seq": 2})
        with pytest.raises(InvalidArgument):
            await dispatcher.networks_applied(c.id, {"session_id": cc.hello["session_id"], "seq": "2"})


async def test_nodes_without_a_session_or_whose_session_ends_are_not_waited_for() -> None:
    s, c = await three_nodes()
    on_a = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    on_b = task_of(s.web, 2, s.b.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING)
    on_c = task_of(s.web, 3, c.id, (s.net, "10.0.1.7/24"), state=TaskState.RUNNING)
    await put(s.store, on_a, on_b, on_c)
    dispatcher = Dispatcher(s.store)
    push = dispatcher._networks
    async with pushing(dispatcher), sessions(dispatcher, s.a) as (a,):   # C uses net but has no session
        b = await Session(dispatcher, s.b).open()
        await desire(s.store, on_a.id, TaskState.SHUTDOWN)
        await a.networks()
        await a.ack()
        await b.networks()
        async with _reading(a) as stop:
            await async_wait_until(_holding(push), what="the hold of A's task")   # waiting for B only
            await b.close()                      # B's session ends before it acknowledged
            async with asyncio.timeout(5):
                assert changes_of(await stop) == [("update", on_a.id)]
        assert push.drain.pending() == 0 and push.drain.expired == 0

        b2 = await Session(dispatcher, s.b).open()   # B again; then a new session of B supersedes it
        async with contextlib.aclosing(b2.stream):  # type: ignore[type-var]
            await desire(s.store, on_b.id, TaskState.SHUTDOWN)
            await b2.networks()
            await a.networks()
            await a.ack()
            async with _reading(b2) as stop:
                await async_wait_until(_holding(push), what="the hold of B's task")   # B's own ack
                b3 = await Session(dispatcher, s.b).open()
                async with contextlib.aclosing(b3.stream):  # type: ignore[type-var]
                    assert push.drain.pending() == 0   # b2's agent cannot answer any more: not waited for
                    with pytest.raises(FailedPrecondition):
                        async with asyncio.timeout(5):
                            await stop               # (and b2's stream ends at its next message)


def _holding(push: Any) -> Any:
    async def check() -> bool:
        return bool(push.drain.pending())
    return check


async def test_without_acknowledgements_the_stop_goes_after_the_bound_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    s, _ = await three_nodes()
    clock = ManualClock(start=1000.0)
    on_a = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    on_b = task_of(s.web, 2, s.b.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING)
    await put(s.store, on_a, on_b)
    dispatcher = Dispatcher(s.store, clock=clock.now, sleep=clock.sleep, drain_timeout=5.0)
    push = dispatcher._networks
    async with contextlib.AsyncExitStack() as stack:
        a, b = await stack.enter_async_context(sessions(dispatcher, s.a, s.b))
        runner = await stack.enter_async_context(_running(dispatcher))
        await desire(s.store, on_a.id, TaskState.SHUTDOWN)
        await a.networks()
        await b.networks()
        await a.ack()                            # B never answers
        pending = await stack.enter_async_context(_reading(a))
        await async_wait_until(_holding(push), what="the hold of A's task")
        await clock.advance(4.8)
        await clock.advance(0.0)
        assert push.drain.pending() == 1 and not pending.done()
        with caplog.at_level(logging.WARNING, logger="shoal.dispatcher"):
            await clock.advance(0.4)
            async with asyncio.timeout(5):
                message = await pending
        assert changes_of(message) == [("update", on_a.id)] and push.drain.expired == 1
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and on_a.id in r.getMessage()]
        assert len(warnings) == 1 and s.b.id in warnings[0].getMessage() and s.a.id not in warnings[0].getMessage()
        assert not runner.done()


async def test_a_node_declared_down_is_waited_for_no_more() -> None:
    s, _ = await three_nodes()
    clock = ManualClock(start=1000.0)
    on_a = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    on_b = task_of(s.web, 2, s.b.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING)
    await put(s.store, on_a, on_b)
    dispatcher = Dispatcher(s.store, clock=clock.now, sleep=clock.sleep, drain_timeout=600.0)
    push = dispatcher._networks
    async with contextlib.AsyncExitStack() as stack:
        a, b = await stack.enter_async_context(sessions(dispatcher, s.a, s.b))
        await stack.enter_async_context(_running(dispatcher))
        await desire(s.store, on_a.id, TaskState.SHUTDOWN)
        await a.networks()
        await b.networks()
        await a.ack()                            # B's agent is silent: no ack, no heartbeats
        stop = await stack.enter_async_context(_reading(a))
        await async_wait_until(_holding(push), what="the hold of A's task")
        for _ in range(300):                     # a minute at most, in monitor steps; the grace is 15 s
            if stop.done():
                break
            await dispatcher.heartbeat(s.a.id, {"session_id": a.hello["session_id"]})
            await clock.advance(MONITOR_INTERVAL)
        async with asyncio.timeout(5):
            assert changes_of(await stop) == [("update", on_a.id)]
        assert s.store.view(lambda tx: tx.get("nodes", s.b.id)).state == "down"
        assert push.drain.expired == 0 and clock.now() < 1000.0 + 60   # not by the bound


@contextlib.asynccontextmanager
async def _running(dispatcher: Dispatcher) -> AsyncIterator[Any]:
    """The dispatcher's leader-term loop (monitor and push), cancelled on exit."""
    loop = asyncio.create_task(dispatcher.run())
    try:
        yield loop
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


@contextlib.asynccontextmanager
async def _reading(session: Session) -> AsyncIterator[Any]:
    """The session's next message, read in the background (so its stream makes its hold)."""
    reader = asyncio.create_task(session.next())
    try:
        yield reader
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_a_task_without_networks_or_not_in_rotation_is_not_held() -> None:
    s, _ = await three_nodes()
    plain = Task(id=new_id(), service_id="svc", slot=1, node_id=s.a.id, spec={"ContainerSpec": {"Image": "x"}})
    for step in (TaskState.ASSIGNED, TaskState.RUNNING):
        plain.status.advance(step, "", step.api)
    starting = task_of(s.web, 2, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.ASSIGNED)   # not running yet
    await put(s.store, plain, starting)
    dispatcher = Dispatcher(s.store)
    async with pushing(dispatcher) as push, sessions(dispatcher, s.a, s.b) as (a, _):
        await desire(s.store, plain.id, TaskState.SHUTDOWN)
        assert changes_of(await a.next()) == [("update", plain.id)]
        await desire(s.store, starting.id, TaskState.SHUTDOWN)
        message = await a.next()
        if message["kind"] == "networks":
            message = await a.next()
        assert changes_of(message) == [("update", starting.id)]
        assert push.drain.held == 0


async def test_a_held_task_removed_meanwhile_ends_removed() -> None:
    s, _ = await three_nodes()
    on_a = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    on_b = task_of(s.web, 2, s.b.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING)
    await put(s.store, on_a, on_b)
    dispatcher = Dispatcher(s.store)
    async with pushing(dispatcher) as push, sessions(dispatcher, s.a, s.b) as (a, b):
        await desire(s.store, on_a.id, TaskState.SHUTDOWN)
        await a.networks()
        await a.ack()
        await b.networks()
        later = task_of(s.web, 3, s.a.id)
        await put(s.store, later)
        assert changes_of(await a.next()) == [("update", later.id)]   # the hold is in place
        await s.store.update(lambda tx: tx.delete("tasks", on_a.id))   # absorbed while held
        await advance(s.store, later.id, TaskState.RUNNING)            # (a status echo: sent nowhere)
        await b.ack()
        message = await a.next()
        if message["kind"] == "networks":      # (A's views after the delete)
            message = await a.next()
        assert changes_of(message) == [("remove", on_a.id)]
        assert push.drain.pending() == 0


async def test_a_resync_while_held_keeps_the_task_as_it_was_until_the_hold_ends() -> None:
    s = Swarm()
    s.store = Store(watch_limit=3)
    await s.seed()
    on_a = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    on_b = task_of(s.web, 2, s.b.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING)
    await put(s.store, on_a, on_b)
    dispatcher = Dispatcher(s.store)
    async with pushing(dispatcher), sessions(dispatcher, s.a, s.b) as (a, b):
        await desire(s.store, on_a.id, TaskState.SHUTDOWN)
        await a.networks()
        await a.ack()
        await b.networks()
        first = task_of(s.web, 3, s.a.id)
        await put(s.store, first)
        assert changes_of(await a.next()) == [("update", first.id)]   # the hold is in place
        for slot in range(4, 9):   # one write each, no read between: A's assignment feed overflows
            await put(s.store, task_of(s.web, slot, s.a.id))
        complete: list[dict[str, Any]] = []
        while True:
            message = await a.next()
            if message["kind"] == "assignments":
                assert message["type"] == "complete"
                complete.extend(message["tasks"])
                if not message["more"]:
                    break
        held = next(Task.from_record(t) for t in complete if t["id"] == on_a.id)
        assert held.desired_state is TaskState.RUNNING                # as the agent had it
        while (await a.next())["kind"] != "node":
            pass
        await b.ack()
        message = await a.next()
        assert changes_of(message) == [("update", on_a.id)] and desired_of(message, on_a.id) is TaskState.SHUTDOWN


async def test_closing_the_holding_stream_ends_its_holds() -> None:
    s, _ = await three_nodes()
    on_a = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    on_b = task_of(s.web, 2, s.b.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING)
    await put(s.store, on_a, on_b)
    dispatcher = Dispatcher(s.store)
    async with pushing(dispatcher) as push, sessions(dispatcher, s.b) as (b,):
        a = await Session(dispatcher, s.a).open()
        await desire(s.store, on_a.id, TaskState.SHUTDOWN)
        await a.networks()
        later = task_of(s.web, 3, s.a.id)
        await put(s.store, later)
        assert changes_of(await a.next()) == [("update", later.id)]
        assert push.drain.pending() == 1
        await a.close()
        assert push.drain.pending() == 0
        assert names(await b.networks()) == ["net"]
