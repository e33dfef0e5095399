"""NodeNetworking hands a task's sandbox over as soon as its namespace exists and builds the rest
(interfaces, DNS, mesh side, host ports) meanwhile: `ready()` waits for that build, a failed build
is tried again by the next `ready()`, and `release` cancels a build still running. No kernel: the
overlay host is a stand-in whose `attach` the test holds and fails at will."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from model import Task
from node.networking import NodeNetworking
from overlay import SandboxRecord
from worker.networking import NetworkViews

TASK = "t4sk00000000000000000001"


class Host:
    """What NodeNetworking calls on an OverlayHost, for sandboxes without networks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 4789
        self.gate = asyncio.Event()
        self.fail = 0                     # how many attaches still fail
        self.attaching = asyncio.Event()
        self.attached: list[str] = []
        self.cancelled = 0
        self.deleted: list[str] = []
        self.records: dict[str, SandboxRecord] = {}

    async def create_sandbox(self, key: str) -> Path:
        self.records.setdefault(key, SandboxRecord(key))
        return self.root / f"s-{key}"

    async def attach(self, key: str, attachments: list[Any], way_out: bool | None = None) -> None:
        self.attaching.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            self.fail -= 1
            raise OSError("veth: no room")
        self.attached.append(key)

    async def sandboxes(self) -> dict[str, SandboxRecord]:
        return dict(self.records)

    async def delete_sandbox(self, key: str) -> None:
        self.records.pop(key, None)
        self.deleted.append(key)


def networking(tmp_path: Path) -> tuple[NodeNetworking, Host]:
    net = NodeNetworking(tmp_path, lambda: "198.18.0.11")
    host = Host(tmp_path)
    views = NetworkViews()
    views.apply({"kind": "networks", "type": "complete", "networks": []})
    net._views = views

    async def host_for(port: int) -> Any:
        return host

    net._host_for = host_for          # type: ignore[method-assign]
    net._host = host                  # type: ignore[assignment]
    return net, host


async def test_the_namespace_is_handed_over_before_the_build_ends_and_ready_waits_for_it(tmp_path: Path) -> None:
    net, host = networking(tmp_path)
    sandbox = await net.sandbox(Task(id=TASK))
    assert sandbox.netns_path == str(tmp_path / f"s-{TASK}") and sandbox.ready is not None
    await host.attaching.wait()
    assert host.attached == [], "handed over while the interfaces are still being made"
    waiting = asyncio.ensure_future(sandbox.ready())
    await asyncio.sleep(0)
    assert not waiting.done()
    host.gate.set()
    await asyncio.wait_for(waiting, 5)
    assert host.attached == [TASK]
    await sandbox.ready()                                 # done: no second build
    assert host.attached == [TASK]
    await net.release(TASK)
    assert host.deleted == [TASK] and net._builds == {}


async def test_a_failed_build_raises_from_ready_and_the_next_ready_builds_again(tmp_path: Path) -> None:
    net, host = networking(tmp_path)
    host.fail, host.gate = 1, asyncio.Event()
    host.gate.set()
    sandbox = await net.sandbox(Task(id=TASK))
    assert sandbox.ready is not None
    with pytest.raises(OSError, match="no room"):
        await sandbox.ready()
    await sandbox.ready()                                 # as the executor's retried start does
    assert host.attached == [TASK]
    await net.release(TASK)


async def test_release_cancels_a_build_still_running_and_a_cancelled_waiter_leaves_it_alone(tmp_path: Path) -> None:
    net, host = networking(tmp_path)
    sandbox = await net.sandbox(Task(id=TASK))
    assert sandbox.ready is not None
    await host.attaching.wait()
    waiter = asyncio.ensure_future(sandbox.ready())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert host.cancelled == 0 and not net._builds[TASK].done(), "the build belongs to NodeNetworking"
    await net.release(TASK)
    assert host.cancelled == 1 and host.deleted == [TASK] and net._builds == {}
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("sandbox ")]
