"""The metrics' pure parts: addresses, the scrape-time collector on an in-memory store, the
hooks (leader changes, scheduling latency, timed proposals, timed container starts) and the API
middleware, each read back through prometheus_client's own text parser."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from manager.metrics.collector import NO_REASON, pending_reason
from manager.store import Store
from model import Node, Service, Task, TaskState, format_time
from node.metrics import AddressError, DaemonMetrics, side_address
from raft.node import NodeOptions
from worker.timed import TimedTaskExecutor


def samples(metrics: DaemonMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: DaemonMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


@pytest.mark.parametrize(("text", "expected"), [
    ("9323", ("127.0.0.1", 9323)),
    ("0.0.0.0:9323", ("0.0.0.0", 9323)),
    ("198.18.0.11:80", ("198.18.0.11", 80)),
    ("[::1]:9323", ("::1", 9323)),
    ("localhost:0", ("localhost", 0)),
    (":9323", ("127.0.0.1", 9323)),
])
def test_a_bare_port_binds_loopback(text: str, expected: tuple[str, int]) -> None:
    assert side_address(text, "--metrics-addr") == expected


@pytest.mark.parametrize("text", ["", "abc", "1.2.3.4:", "1.2.3.4:99999", "example.com:80"])
def test_bad_addresses_are_refused_with_the_flag(text: str) -> None:
    with pytest.raises(AddressError, match="--dashboard-addr"):
        side_address(text, "--dashboard-addr")


def test_pending_reasons_drop_the_per_node_detail() -> None:
    assert pending_reason("no suitable node (2 nodes lack memory, 1 is drained)") == "no suitable node"
    assert pending_reason("") == NO_REASON


@dataclass
class FakeCore:
    term: int = 7


@dataclass
class FakeRaft:
    core: FakeCore = field(default_factory=FakeCore)
    commit_index: int = 12
    applied_index: int = 11
    is_leader: bool = True


@dataclass
class FakeDispatcher:
    session_count: int = 3


@dataclass
class FakeRuntime:
    store: Store
    raft: FakeRaft = field(default_factory=FakeRaft)
    dispatcher: Any = field(default_factory=FakeDispatcher)


def task(task_id: str, state: TaskState, err: str = "") -> Task:
    t = Task(id=task_id, service_id="s1", slot=1, service_name="web", created_at=format_time(100.0))
    t.status.state = state
    t.status.err = err
    return t


async def test_the_collector_reads_raft_the_store_and_the_dispatcher_at_scrape_time() -> None:
    store = Store()

    def fill(tx: Any) -> None:
        tx.create(Node(id="n1", spec={"Role": "manager"}, status={"State": "ready"}))
        tx.create(Service(id="s1", spec={"Name": "web"}))
        tx.create(task("t1", TaskState.RUNNING))
        tx.create(task("t2", TaskState.PENDING, "no suitable node (1 node lacks memory)"))
        tx.create(task("t3", TaskState.PENDING))

    await store.update(fill)
    runtime: FakeRuntime | None = FakeRuntime(store)
    metrics = DaemonMetrics()
    metrics.watch_manager(lambda: runtime)
    assert value(metrics, "shoal_raft_term") == 7
    assert value(metrics, "shoal_raft_commit_index") == 12
    assert value(metrics, "shoal_raft_applied_index") == 11
    assert value(metrics, "shoal_raft_is_leader") == 1
    assert value(metrics, "shoal_store_objects", kind="tasks") == 3
    assert value(metrics, "shoal_store_objects", kind="services") == 1
    assert value(metrics, "shoal_tasks", state="running") == 1
    assert value(metrics, "shoal_tasks", state="failed") == 0     # every state, always
    assert value(metrics, "shoal_tasks_pending", reason="no suitable node") == 1
    assert value(metrics, "shoal_tasks_pending", reason=NO_REASON) == 1
    assert value(metrics, "shoal_nodes", state="ready") == 1
    assert value(metrics, "shoal_dispatcher_sessions") == 3
    await store.update(lambda tx: tx.delete("tasks", "t1"))
    assert value(metrics, "shoal_tasks", state="running") == 0   # read again at the next scrape
    runtime = None                                               # demoted, or left the swarm
    names = {name for name, _ in samples(metrics)}
    assert "shoal_raft_term" not in names and "shoal_tasks" not in names
    assert "shoal_raft_proposal_seconds_count" in names   # the event-fed families stay


def test_leader_changes_count_new_leaders_only() -> None:
    metrics = DaemonMetrics()
    hooks = metrics.manager
    for leader in (0, 5, 5, 0, 5, 9):      # "no leader" between elections is not a change of leader
        hooks.leader_changed(leader)
    assert value(metrics, "shoal_raft_leader_changes_total") == 2


def test_raft_options_time_fsync_and_report_leaders() -> None:
    metrics = DaemonMetrics()
    synced: list[int] = []
    options = NodeOptions(fsync=synced.append)
    metrics.manager.instrument_raft(options)
    assert options.fsync is not None and options.on_leader_change is not None
    options.fsync(42)
    options.on_leader_change(3)
    assert synced == [42]
    assert value(metrics, "shoal_raft_fsync_seconds_count") == 1
    assert value(metrics, "shoal_raft_leader_changes_total") == 1


def test_scheduling_latency_is_from_creation_to_assignment() -> None:
    metrics = DaemonMetrics()
    metrics.manager._clock = lambda: 102.5
    metrics.manager.task_assigned(task("t1", TaskState.ASSIGNED))
    assert value(metrics, "shoal_scheduler_latency_seconds_count") == 1
    assert value(metrics, "shoal_scheduler_latency_seconds_sum") == pytest.approx(2.5)


async def test_timed_proposer_and_heartbeat_misses() -> None:
    from manager.metrics import TimedProposer

    metrics = DaemonMetrics()
    applied: list[bytes] = []

    class Inner:
        async def propose(self, data: bytes) -> None:
            applied.append(data)

    await TimedProposer(Inner(), metrics.manager.proposal_seconds).propose(b"x")
    metrics.manager.heartbeat_missed()
    assert applied == [b"x"]
    assert value(metrics, "shoal_raft_proposal_seconds_count") == 1
    assert value(metrics, "shoal_dispatcher_heartbeat_misses_total") == 1


class FakeController:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def step(*_: Any) -> None:
            self.calls.append(name)
        return step


async def test_container_starts_are_timed_and_every_other_step_passes_through() -> None:
    metrics = DaemonMetrics()
    inner = FakeController()

    class Executor:
        async def controller(self, task: Task, progress: Callable[[str], None]) -> Any:
            return inner

        def existing(self, task_id: str) -> Any:
            return inner if task_id == "t1" else None

    timed = TimedTaskExecutor(Executor(), metrics.container_started)
    ctl = await timed.controller(task("t1", TaskState.PREPARING), print)
    await ctl.prepare()
    await ctl.start()
    await ctl.shutdown(1.0)
    assert inner.calls == ["prepare", "start", "shutdown"]
    assert timed.existing("t2") is None
    assert timed.existing("t1") is not None
    assert value(metrics, "shoal_container_start_seconds_count") == 1


async def test_api_latency_is_labelled_by_route_without_the_version_prefix() -> None:
    metrics = DaemonMetrics()
    app = web.Application()

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({})

    async def missing(_: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app.router.add_get("/services/{id}", ok)
    app.router.add_get(r"/v{api_version:\d+\.\d+}/services/{id}", ok)
    app.router.add_get("/gone", missing)
    metrics.instrument_api(app)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/v1.44/services/abc")).status == 200
        assert (await client.get("/services/def")).status == 200
        assert (await client.get("/gone")).status == 404
        assert (await client.get("/nowhere")).status == 404
    assert value(metrics, "shoal_api_request_seconds_count", method="GET", route="/services/{id}", code="200") == 2
    assert value(metrics, "shoal_api_request_seconds_count", method="GET", route="/gone", code="404") == 1
    assert value(metrics, "shoal_api_request_seconds_count", method="GET", route="unmatched", code="404") == 1


async def test_a_side_server_reports_its_bound_address_and_a_taken_port_is_an_error() -> None:
    from node.metrics import SideServer

    metrics = DaemonMetrics()
    first = SideServer("metrics", metrics.exposition_app(), ("127.0.0.1", 0))
    host, port = await first.start()
    try:
        assert host == "127.0.0.1" and port > 0
        async with TestClient(TestServer(web.Application())) as client:
            resp = await client.session.get(f"http://127.0.0.1:{port}/metrics")
            assert resp.status == 200 and "shoal_raft_leader_changes_total" in await resp.text()
        second = SideServer("metrics", metrics.exposition_app(), ("127.0.0.1", port))
        with pytest.raises(OSError):
            await second.start()
        await second.stop()
    finally:
        await first.stop()
        await first.stop()      # idempotent


def test_the_daemon_refuses_a_bad_address_before_starting() -> None:
    from click.testing import CliRunner

    from cli.commands import shoal

    result = CliRunner().invoke(shoal, ["daemon", "--data-dir", "/nonexistent/shoal", "--metrics-addr", "nine"])
    assert result.exit_code == 1
    assert "invalid --metrics-addr 'nine': expected PORT or HOST:PORT" in result.output
