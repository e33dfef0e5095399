"""The agent acknowledges a networks message only once `sync` has returned for views that include it
(worker/agent/agent.py): never before, never for a failed sync, one call at a time with the newest
seq winning, and only to the session that sent it. Over the real cluster port, the dispatcher
hears the acknowledgement. No sleeps: the fake data path blocks until the test lets it return,
and waits are deadlines on conditions."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aio import cancel_and_wait
from model import Task
from tests.support.fake_executor import FakeExecutor
from tests.support.session_env import session_env
from tests.support.wait import async_wait_until
from tests.unit.test_agent_networks import networks
from worker.agent.agent import Agent
from worker.networking import NetworkViews, TaskSandbox


class GatedNetworking:
    """A data path whose `sync` returns only when the test opens the gate (or fails if told)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.synced: list[set[str]] = []
        self.fail_next = False

    async def sync(self, views: NetworkViews) -> None:
        taken = set(views.views)   # what it programs: the views as they are when it starts
        self.entered.set()
        await self.gate.wait()
        self.gate.clear()
        self.entered.clear()
        if self.fail_next:
            self.fail_next = False
            raise OSError("netlink said no")
        self.synced.append(taken)

    async def sandbox(self, task: Task) -> TaskSandbox:
        raise AssertionError("no task runs here")

    async def release(self, task_id: str) -> None:
        pass

    async def retain(self, task_ids: Iterable[str]) -> None:
        pass


class RecordingClient:
    """The session's RpcClient as the ack loop uses it: records each call, answers at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.called = asyncio.Event()

    async def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = 30.0) -> Any:
        self.calls.append((method, dict(params or {})))
        self.called.set()
        return {}


def acked(client: RecordingClient) -> list[tuple[str, int]]:
    assert {method for method, _ in client.calls} <= {"dispatcher.networks_applied"}
    return [(params["session_id"], params["seq"]) for _, params in client.calls]


async def until(event: asyncio.Event, check: Any) -> None:
    async with asyncio.timeout(10):
        while not check():
            event.clear()
            await event.wait()


def message(seq: int, *ids: str, kind: str = "complete") -> dict[str, Any]:
    return networks(*ids, kind=kind) | {"seq": seq, "removed": []}


async def test_the_ack_goes_after_sync_returns_and_the_newest_applied_seq_wins() -> None:
    fake = GatedNetworking()
    client = RecordingClient()
    agent = Agent("node", [], ssl.create_default_context, executor=None,  # type: ignore[arg-type]
                  description=dict, addr="127.0.0.1", networking=fake)
    agent._client, agent._session_id = client, "s1"  # type: ignore[assignment]
    loops = [asyncio.create_task(agent._network_loop(fake)), asyncio.create_task(agent._ack_loop())]
    try:
        agent._handle(message(1, "a"))
        await asyncio.wait_for(fake.entered.wait(), 10)    # sync of seq 1 under way ...
        agent._handle(message(2, "a", "b", kind="incremental"))
        agent._handle(message(3, "a", "b", "c", kind="incremental"))
        assert client.calls == []                          # ... and nothing acknowledged before it returns
        fake.gate.set()
        await until(client.called, lambda: acked(client))
        assert acked(client) == [("s1", 1)]                # what that sync covered, not 2 or 3
        await asyncio.wait_for(fake.entered.wait(), 10)    # the next sync takes the newest views at once
        assert fake.synced == [{"a"}] and acked(client) == [("s1", 1)]
        fake.gate.set()
        await until(client.called, lambda: len(client.calls) == 2)
        assert fake.synced[-1] == {"a", "b", "c"} and acked(client) == [("s1", 1), ("s1", 3)]   # 2 skipped

        agent._handle(message(4, "a", "b", "c", kind="incremental"))   # nothing new: acknowledged with no sync
        await until(client.called, lambda: len(client.calls) == 3)
        assert acked(client)[-1] == ("s1", 4) and len(fake.synced) == 2

        fake.fail_next = True                               # a failed sync acknowledges nothing
        agent._handle(message(5, "d", kind="incremental"))
        await asyncio.wait_for(fake.entered.wait(), 10)
        fake.gate.set()
        await asyncio.wait_for(fake.entered.wait(), 10)     # the retry (after its pause) ...
        assert acked(client)[-1] == ("s1", 4)
        fake.gate.set()                                     # ... succeeds: now 5
        await until(client.called, lambda: len(client.calls) == 4)
        assert acked(client)[-1] == ("s1", 5)

        agent._session_id = "s2"                           # a new session: its seqs start again
        agent._handle(message(1, "a", "b", "c", "d"))   # (its own addresses: views to sync)
        await asyncio.wait_for(fake.entered.wait(), 10)
        assert len(client.calls) == 4
        fake.gate.set()
        await until(client.called, lambda: len(client.calls) == 5)
        assert acked(client)[-1] == ("s2", 1)
    finally:
        await cancel_and_wait(loops)


async def test_an_ack_for_a_session_that_ended_is_not_sent() -> None:
    fake = GatedNetworking()
    client = RecordingClient()
    agent = Agent("node", [], ssl.create_default_context, executor=None,  # type: ignore[arg-type]
                  description=dict, addr="127.0.0.1", networking=fake)
    agent._client, agent._session_id = client, "s1"  # type: ignore[assignment]
    loops = [asyncio.create_task(agent._network_loop(fake)), asyncio.create_task(agent._ack_loop())]
    try:
        agent._handle(message(1, "a"))
        await asyncio.wait_for(fake.entered.wait(), 10)
        agent._session_id = "s2"                            # the session ended while its views were applied
        agent._handle(message(1, "a", "b"))
        fake.gate.set()
        await asyncio.wait_for(fake.entered.wait(), 10)     # s2's views next: s1's ack was dropped
        fake.gate.set()
        await until(client.called, lambda: client.calls)
        assert acked(client) == [("s2", 1)]
    finally:
        await cancel_and_wait(loops)


async def test_the_dispatcher_hears_the_acks_over_the_cluster_port(tmp_path: Path) -> None:
    fake = GatedNetworking()
    fake.gate.set()
    async with session_env(tmp_path, FakeExecutor(), networking=fake) as env:
        async def acknowledged() -> bool:
            session = env.dispatcher._sessions.get(env.node)
            if session is None or session.networks is None:
                return False
            fake.gate.set()   # (the gate clears itself after each sync)
            return session.networks.seq >= 1 and session.networks.acked == session.networks.seq
        await async_wait_until(acknowledged, what="the agent to acknowledge its session's complete set")
