"""The agent's network loop: the newest views are applied (coalesced), a failure is retried, and a
complete assignment set is followed by dropping the sandboxes of tasks the node no longer has."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

from aio import cancel_and_wait
from model import Task
from worker.agent.agent import Agent
from worker.networking import NetworkViews, TaskSandbox


class RecordingNetworking:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.synced: list[set[str]] = []
        self.retained: list[set[str]] = []
        self.changed = asyncio.Event()

    async def sync(self, views: NetworkViews) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("netlink said no")
        self.synced.append(set(views.views))
        self.changed.set()

    async def sandbox(self, task: Task) -> TaskSandbox:
        raise AssertionError("no task runs here")

    async def release(self, task_id: str) -> None:
        pass

    async def retain(self, task_ids: Iterable[str]) -> None:
        self.retained.append(set(task_ids))
        self.changed.set()


def networks(*ids: str, kind: str = "complete") -> dict[str, Any]:
    return {"kind": "networks", "type": kind, "data_path_port": 4789,
            "networks": [{"id": i, "name": i, "vni": 4097 + n, "subnet": f"10.0.{n}.0/24", "gateway": f"10.0.{n}.1"}
                         for n, i in enumerate(ids)]}


def agent(networking: RecordingNetworking) -> Agent:
    return Agent("node", [], ssl.create_default_context, executor=None,  # type: ignore[arg-type]
                 description=dict, addr="127.0.0.1", networking=networking)


async def until(networking: RecordingNetworking, check: Any) -> None:
    async with asyncio.timeout(10):
        while not check():
            networking.changed.clear()
            await networking.changed.wait()


async def test_views_are_applied_newest_first_and_a_failure_is_retried() -> None:
    fake = RecordingNetworking(failures=1)
    a = agent(fake)
    loop = asyncio.create_task(a._network_loop(fake))
    try:
        a._handle(networks("a", "b"))
        await until(fake, lambda: fake.synced)                 # the failed first sync was retried
        assert fake.synced[-1] == {"a", "b"}
        a._handle(networks("c", kind="incremental") | {"removed": ["a"]})
        await until(fake, lambda: fake.synced[-1] == {"b", "c"})
        a._handle({"kind": "assignments", "type": "complete", "tasks": [], "more": False})
        await until(fake, lambda: fake.retained)
        assert fake.retained == [set()]
    finally:
        await cancel_and_wait([loop])
