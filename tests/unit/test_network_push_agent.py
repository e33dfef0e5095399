"""The network push with a real agent over the cluster port (tests/support/session_env.py): the
networks messages cross the wire (msgpack over mutual TLS) with the complete set before the
first assignments, a task's network before the task, and the node's own DNS updated once the
task runs. Waits are deadlines on conditions, not sleeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model import TaskState
from tests.support.fake_executor import FakeExecutor
from tests.support.session_env import session_env
from tests.support.wait import async_wait_until
from tests.unit.test_network_push import overlay, put, service, task_of
from worker.agent.agent import Agent


async def test_a_real_agent_gets_the_networks_over_the_cluster_port_before_its_tasks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[dict[str, Any]] = []
    handle = Agent._handle

    def recording(agent: Agent, message: dict[str, Any]) -> None:
        heard.append(message)
        handle(agent, message)

    monkeypatch.setattr(Agent, "_handle", recording)
    executor = FakeExecutor()
    async with session_env(tmp_path, executor) as env:
        store = env.store
        ingress = overlay("ingress", "10.0.0.0/24", 4096, Ingress=True)
        net = overlay("net", "10.0.1.0/24", 4097)
        web = service("web", net)
        await put(store, ingress, net, web)

        async def kinds() -> list[tuple[str, str]]:
            return [(m["kind"], m.get("type", "")) for m in heard if m["kind"] in ("networks", "assignments")]

        opened = await async_wait_until(kinds, what="the session's opening")
        assert opened[:2] == [("networks", "complete"), ("assignments", "complete")]
        task = task_of(web, 1, env.node, (net, "10.0.1.5/24"))
        await put(store, task)

        async def running() -> bool:
            current = store.view(lambda tx: tx.get("tasks", task.id))
            return current.status.state == TaskState.RUNNING

        await async_wait_until(running, what="the task to run")

        def position(pred: Any) -> int:
            return next(i for i, m in enumerate(heard) if pred(m))

        net_added = position(lambda m: m["kind"] == "networks" and [v["id"] for v in m["networks"]] == [net.id])
        task_sent = position(lambda m: m["kind"] == "assignments" and m["type"] == "incremental"
                             and any(c.get("task", {}).get("id") == task.id for c in m["changes"]))
        assert net_added < task_sent

        async def in_dns() -> bool:   # its own node's DNS holds it once it runs
            views = [v for m in heard if m["kind"] == "networks" for v in m["networks"] if v["id"] == net.id]
            return bool(views) and [t["id"] for s in views[-1]["services"] for t in s["tasks"]] == [task.id]

        await async_wait_until(in_dns, what="the task in the node's DNS")
