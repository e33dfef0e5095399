"""ServiceBalancing gives every sandbox on a network with VIPs its own VIP table: the same
services (in rotation and draining) as the network's LB namespace, from the node's sync and,
before a task's container starts, from its sandbox. A fake data plane and overlay host stand in
behind the interfaces ServiceBalancing uses; the real ones are tested in tests/ingress."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from ingress.dataplane import LbNetwork, TaskVips
from node.balancing import ServiceBalancing, lb_key
from overlay import AttachmentRecord, OverlaySpec, SandboxRecord
from worker.networking import NetworkView, NetworkViews

APP, OTHER = "appnet", "othernet"
VIP, OTHER_VIP = IPv4Address("10.0.1.2"), IPv4Address("10.0.2.2")


class Applied:
    unreserved: tuple[str, ...] = ()
    flushed = 0


class FakePlane:
    def __init__(self) -> None:
        self.lbs: dict[str, LbNetwork] = {}
        self.vips: dict[str, TaskVips] = {}
        self.calls: list[str] = []
        self.missing: set[str] = set()      # sandboxes whose namespace is gone
        self.removing: dict[str, Any] = {}  # the host's records (web1 leaves them as it fails)

    async def held_lb(self, key: str, netns: str) -> dict[Any, Any]:
        return {}

    async def set_lb(self, key: str, netns: str, want: LbNetwork) -> Applied:
        self.lbs[key] = want
        return Applied()

    async def remove_lb(self, key: str, netns: str | None) -> Applied:
        return Applied()

    async def set_vips(self, key: str, netns: str, want: TaskVips) -> Applied:
        if key in self.missing:
            if key == "web1":
                self.removing.pop(key, None)
            raise FileNotFoundError(netns)
        self.calls.append(key)
        self.vips[key] = want
        return Applied()

    def forget_sandbox(self, key: str) -> None:
        self.vips.pop(key, None)


def record(key: str, *attachments: tuple[str, str]) -> SandboxRecord:
    return SandboxRecord(key, tuple(AttachmentRecord(net, IPv4Interface(addr), "eth0") for net, addr in attachments))


class FakeHost:
    gateway_bridge = "gw0"

    def __init__(self) -> None:
        self.records = {
            lb_key(APP): record(lb_key(APP), (APP, "10.0.1.3/24")),
            lb_key(OTHER): record(lb_key(OTHER), (OTHER, "10.0.2.3/24")),
            "client": record("client", (APP, "10.0.1.9/24")),
            "both": record("both", (APP, "10.0.1.10/24"), (OTHER, "10.0.2.10/24")),
            "web1": record("web1", (APP, "10.0.1.5/24")),
        }
        self.after_read: Any = None         # awaited once, after a read's answer was taken

    async def sandboxes(self) -> dict[str, SandboxRecord]:
        out = dict(self.records)
        if self.after_read is not None:
            after, self.after_read = self.after_read, None
            await after()
        return out

    def sandbox_path(self, key: str) -> str:
        return f"/fake/netns/{key}"


def views(web: tuple[str, ...], draining_gone: bool = False) -> tuple[NetworkViews, dict[str, OverlaySpec]]:
    def net(nid: str, octet: int, services: list[dict[str, Any]]) -> NetworkView:
        return NetworkView.from_wire({
            "id": nid, "name": nid, "vni": 4096 + octet, "subnet": f"10.0.{octet}.0/24", "gateway": f"10.0.{octet}.1",
            "ingress": False, "node_address": f"10.0.{octet}.3/24",
            "peers": [{"ip": "10.0.1.6", "mac": "02:42:0a:00:01:06", "vtep": "192.0.2.2"}] if octet == 1 else [],
            "services": services})

    out = NetworkViews()
    out.views = {
        APP: net(APP, 1, [{"name": "web", "id": "web", "mode": "vip", "vip": str(VIP), "ports": [],
                           "tasks": [{"name": f"web.{i}", "id": f"web{i}", "address": a} for i, a in enumerate(web)]}]),
        OTHER: net(OTHER, 2, [{"name": "db", "id": "db", "mode": "vip", "vip": str(OTHER_VIP), "ports": [],
                               "tasks": [{"name": "db.1", "id": "db1", "address": "10.0.2.7"}]}]),
    }
    specs = {nid: OverlaySpec(nid, 4096 + o, IPv4Network(f"10.0.{o}.0/24"), IPv4Address(f"10.0.{o}.1"))
             for nid, o in ((APP, 1), (OTHER, 2))}
    return out, specs


async def test_each_sandbox_balances_the_vips_of_its_own_networks_as_the_lb_does(tmp_path: Path) -> None:
    plane, host = FakePlane(), FakeHost()
    balancing = ServiceBalancing(plane, tmp_path)    # type: ignore[arg-type]
    await balancing.sync(host, *views(("10.0.1.5", "10.0.1.6")))   # type: ignore[arg-type]
    assert plane.vips["client"] == TaskVips(plane.lbs[APP].services)
    assert plane.vips["web1"] == TaskVips(plane.lbs[APP].services), "a backend reaches its own VIP too"
    assert plane.vips["both"] == TaskVips((*plane.lbs[APP].services, *plane.lbs[OTHER].services))
    assert {s.vip for s in plane.vips["client"].services} == {VIP}, "not the VIPs of a network it is not on"

    # web.1 (10.0.1.6, a peer's) leaves rotation: it drains in every sandbox, as in the LB.
    plane.calls.clear()
    await balancing.sync(host, *views(("10.0.1.5",)))   # type: ignore[arg-type]
    (svc,) = plane.vips["client"].services
    assert svc.backends == (IPv4Address("10.0.1.5"),) and svc.draining == (IPv4Address("10.0.1.6"),)
    assert plane.vips["client"] == TaskVips(tuple(s for s in plane.lbs[APP].services))
    assert sorted(plane.calls) == ["both", "client", "web1"]

    # Nothing changed: no sandbox is programmed again.
    plane.calls.clear()
    await balancing.sync(host, *views(("10.0.1.5",)))   # type: ignore[arg-type]
    assert plane.calls == []


async def test_a_sandbox_made_during_a_sync_gets_that_syncs_vips(tmp_path: Path) -> None:
    """A sandbox that appears just after the sync read the sandboxes, and whose own step took the
    VIPs from before (it ran first), still ends with the new ones: the sync reads them again."""
    plane, host = FakePlane(), FakeHost()
    balancing = ServiceBalancing(plane, tmp_path)    # type: ignore[arg-type]
    await balancing.sync(host, *views(("10.0.1.5", "10.0.1.6")))   # type: ignore[arg-type]
    before = plane.vips["client"]

    async def a_task_starts() -> None:
        if "late" not in host.records:
            host.records["late"] = record("late", (APP, "10.0.1.11/24"))
            await balancing.task_sandbox(host, "late", "svc", None, host.records["late"])  # type: ignore[arg-type]
            assert plane.vips["late"] == before

    host.after_read = a_task_starts
    await balancing.sync(host, *views(("10.0.1.5",)))   # type: ignore[arg-type]
    assert plane.vips["late"] == plane.vips["client"] != before


async def test_a_sandbox_removed_during_a_sync_is_no_failure_but_a_present_one_is(tmp_path: Path) -> None:
    plane, host = FakePlane(), FakeHost()
    balancing = ServiceBalancing(plane, tmp_path)    # type: ignore[arg-type]
    plane.missing = {"web1", "client"}
    plane.removing = host.records      # web1's sandbox goes as its step fails; client's stays
    with pytest.raises(RuntimeError) as failed:
        await balancing.sync(host, *views(("10.0.1.5",)))   # type: ignore[arg-type]
    assert "sandbox client:" in str(failed.value) and "web1" not in str(failed.value)
    assert "both" in plane.vips, "the others are programmed"

    # A task's sandbox released: what was held of it goes (the data plane's too).
    await balancing.forget_task("both", host)   # type: ignore[arg-type]
    assert "both" not in plane.vips


async def test_a_new_tasks_vips_are_in_place_before_its_container_starts(tmp_path: Path) -> None:
    plane, host = FakePlane(), FakeHost()
    balancing = ServiceBalancing(plane, tmp_path)    # type: ignore[arg-type]
    await balancing.sync(host, *views(("10.0.1.5",)))   # type: ignore[arg-type]
    host.records["new"] = record("new", (OTHER, "10.0.2.12/24"))
    await balancing.task_sandbox(host, "new", "svc", None, host.records["new"])  # type: ignore[arg-type]
    assert plane.vips["new"] == TaskVips(plane.lbs[OTHER].services)
    plane.calls.clear()
    host.records["plain"] = record("plain", ("nonet", "10.0.9.2/24"))
    await balancing.task_sandbox(host, "plain", "svc", None, host.records["plain"])  # type: ignore[arg-type]
    assert plane.calls == [], "no VIP on its networks: nothing to program before it starts"


class MeetingPlane(FakePlane):
    """An LB's table waits until a sandbox's table is being written: in turn, it would wait alone."""

    def __init__(self) -> None:
        super().__init__()
        self.sandbox_started = asyncio.Event()

    async def set_lb(self, key: str, netns: str, want: LbNetwork) -> Applied:
        async with asyncio.timeout(5):
            await self.sandbox_started.wait()
        return await super().set_lb(key, netns, want)

    async def set_vips(self, key: str, netns: str, want: TaskVips) -> Applied:
        self.sandbox_started.set()
        return await super().set_vips(key, netns, want)


async def test_the_lbs_and_the_sandboxes_tables_are_written_at_once(tmp_path: Path) -> None:
    """A new backend reaches the tasks' own tables without waiting for each network's LB (each
    may wait out a grace period): the node's sync writes them together."""
    plane, host = MeetingPlane(), FakeHost()
    balancing = ServiceBalancing(plane, tmp_path)    # type: ignore[arg-type]
    await balancing.sync(host, *views(("10.0.1.5", "10.0.1.6")))   # type: ignore[arg-type]
    assert set(plane.lbs) == {APP, OTHER} and plane.vips["client"] == TaskVips(plane.lbs[APP].services)
