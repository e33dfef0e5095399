"""ServiceBalancing.sync programs every task's namespace (its VIPs and its side of the mesh) at
once, not in turn (a change that deletes anything costs each namespace's commit an RCU grace
period, ~16 ms here, and those waits overlap only when the namespaces are applied together), and
one task's failure does not keep the others from being programmed. A fake data plane and overlay
host stand in behind the interfaces ServiceBalancing uses; the real ones are tested in
tests/ingress and tests/overlay."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from ingress.dataplane import Mesh, TaskIngress, TaskVips
from node.balancing import INGRESS_SANDBOX, ServiceBalancing
from overlay import AttachmentRecord, OverlaySpec, SandboxRecord
from worker.networking import NetworkView, NetworkViews

INGRESS = "ingressnet"
TASKS = [f"task{i}" for i in range(5)]


class Applied:
    unreserved: tuple[str, ...] = ()


class FakePlane:
    """Each task's table waits at a barrier of all of them: in turn, the first would wait alone."""

    def __init__(self, failing: str = "") -> None:
        self.barrier = asyncio.Barrier(len(TASKS))
        self.programmed: dict[str, TaskIngress] = {}
        self.failing = failing

    async def held_mesh(self, netns: str) -> dict[Any, Any]:
        return {}

    async def set_mesh(self, netns: str, want: Mesh) -> Applied:
        return Applied()

    async def set_vips(self, key: str, netns: str, want: TaskVips) -> Applied:
        return Applied()            # no VIP network in these tests

    async def set_task(self, key: str, netns: str, want: TaskIngress) -> Applied:
        async with asyncio.timeout(5):
            await self.barrier.wait()
        if key == self.failing:
            raise RuntimeError(f"nft: {key} refused")
        self.programmed[key] = want
        return Applied()


class FakeHost:
    gateway_bridge = "gw0"

    def __init__(self) -> None:
        self.records = {INGRESS_SANDBOX: SandboxRecord(
            INGRESS_SANDBOX, (AttachmentRecord(INGRESS, IPv4Interface("10.0.0.2/24"), "eth0"),),
            gateway=IPv4Interface("172.18.0.2/16"))}
        for i, key in enumerate(TASKS):
            self.records[key] = SandboxRecord(
                key, (AttachmentRecord(INGRESS, IPv4Interface(f"10.0.0.{10 + i}/24"), "eth0"),))

    async def sandboxes(self) -> dict[str, SandboxRecord]:
        return dict(self.records)

    def sandbox_path(self, key: str) -> str:
        return f"/fake/netns/{key}"


def ingress_views() -> tuple[NetworkViews, dict[str, OverlaySpec]]:
    views = NetworkViews()
    views.views = {INGRESS: NetworkView.from_wire({
        "id": INGRESS, "name": "ingress", "vni": 4096, "subnet": "10.0.0.0/24", "gateway": "10.0.0.1",
        "ingress": True, "node_address": "10.0.0.2/24", "peers": [],
        "services": [{"name": "web", "id": "web", "mode": "vip", "vip": "10.0.0.5",
                      "ports": [{"protocol": "tcp", "published": 8080, "target": 80}],
                      "tasks": [{"name": f"web.{i}", "id": key, "address": f"10.0.0.{10 + i}"}
                                for i, key in enumerate(TASKS)]}]})}
    return views, {INGRESS: OverlaySpec(INGRESS, 4096, IPv4Network("10.0.0.0/24"), IPv4Address("10.0.0.1"))}


async def test_every_tasks_side_of_the_mesh_is_programmed_at_once(tmp_path: Path) -> None:
    plane, host = FakePlane(), FakeHost()
    balancing = ServiceBalancing(plane, tmp_path)    # type: ignore[arg-type]
    views, specs = ingress_views()
    await balancing.sync(host, views, specs)         # type: ignore[arg-type]
    assert sorted(plane.programmed) == TASKS
    assert {w.ports for w in plane.programmed.values()} == {(("tcp", 80),)}


async def test_one_tasks_failure_leaves_the_others_programmed_and_is_raised(tmp_path: Path) -> None:
    plane, host = FakePlane(failing=TASKS[2]), FakeHost()
    balancing = ServiceBalancing(plane, tmp_path)    # type: ignore[arg-type]
    views, specs = ingress_views()
    with pytest.raises(RuntimeError, match=f"sandbox {TASKS[2]}: nft: {TASKS[2]} refused"):
        await balancing.sync(host, views, specs)     # type: ignore[arg-type]
    assert sorted(plane.programmed) == [k for k in TASKS if k != TASKS[2]]


class CountingPlane(FakePlane):
    """Counts the task tables in flight; each waits for `release`."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound, self.in_flight, self.most = bound, 0, 0
        self.at_bound, self.release = asyncio.Event(), asyncio.Event()

    async def set_task(self, key: str, netns: str, want: TaskIngress) -> Applied:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.bound:
            self.at_bound.set()
        async with asyncio.timeout(5):
            await self.release.wait()
        self.in_flight -= 1
        self.programmed[key] = want
        return Applied()


async def test_at_most_so_many_task_namespaces_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("node.balancing.SANDBOXES_AT_ONCE", 2)
    plane, host = CountingPlane(bound=2), FakeHost()
    balancing = ServiceBalancing(plane, tmp_path)    # type: ignore[arg-type]
    views, specs = ingress_views()
    sync = asyncio.create_task(balancing.sync(host, views, specs))   # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await plane.at_bound.wait()
    for _ in range(20):             # loop turns: any other task table that could start does
        await asyncio.sleep(0)
    assert plane.in_flight == 2
    plane.release.set()
    await sync
    assert sorted(plane.programmed) == TASKS and plane.most == 2
