"""Scrape-time readings of a manager: Raft's position, the store's objects, tasks and sessions.

Theory of operation: a Prometheus custom collector; nothing is counted between scrapes. Each
scrape asks for the manager runtime of the moment (a node may be promoted, demoted or leave at
any time) and, when there is one, reads Raft's term and indexes and, in one store view, the
objects by kind, tasks by state, pending tasks by reason and nodes by state. The dispatcher's
session count is the leader's alone; a follower reports 0. Every task state is always reported
(0 included) so that series do not appear and vanish as tasks move.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from manager.store import ReadTx, Store
from manager.store.memory import TABLES
from model import TaskState

NO_REASON = "waiting"   # a pending task the scheduler has not yet tried
REASON_LIMIT = 80       # a reason longer than this is cut (a label, not a log line)


class ManagerView(Protocol):
    """What the collector reads of a manager runtime (manager.swarm.runtime.ManagerRuntime)."""

    @property
    def raft(self) -> Any: ...
    @property
    def store(self) -> Store: ...
    @property
    def dispatcher(self) -> Any: ...


def pending_reason(err: str) -> str:
    """A pending task's reason as a label: the scheduler's message without its per-node detail,
    e.g. "no suitable node" for "no suitable node (2 nodes lack memory)"."""
    reason = err.split(" (", 1)[0].strip()
    return reason[:REASON_LIMIT] or NO_REASON


def _census(tx: ReadTx) -> tuple[dict[str, int], Counter[TaskState], Counter[str], Counter[str]]:
    objects = {table: len(tx.all(table)) for table in TABLES}
    states: Counter[TaskState] = Counter()
    reasons: Counter[str] = Counter()
    for task in tx.all("tasks"):
        states[task.status.state] += 1
        if task.status.state == TaskState.PENDING:
            reasons[pending_reason(task.status.err)] += 1
    nodes: Counter[str] = Counter(node.state.value for node in tx.all("nodes"))
    return objects, states, reasons, nodes


class ManagerCollector(Collector):
    def __init__(self, runtime: Callable[[], ManagerView | None]) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self._runtime()
        if runtime is None:
            return
        raft = runtime.raft
        core = raft.core
        yield _gauge("shoal_raft_term", "The current Raft term.", core.term if core is not None else 0)
        yield _gauge("shoal_raft_commit_index", "The highest Raft log index known committed.", raft.commit_index)
        yield _gauge("shoal_raft_applied_index", "The highest Raft log index applied to the store.",
                     raft.applied_index)
        yield _gauge("shoal_raft_is_leader", "1 if this manager is the Raft leader, else 0.", int(raft.is_leader))
        objects, states, reasons, nodes = runtime.store.view(_census)
        yield _labelled("shoal_store_objects", "Objects in the replicated store, by kind.", "kind", objects)
        yield _labelled("shoal_tasks", "Tasks by their current state.", "state",
                        {state.api: states.get(state, 0) for state in TaskState})
        yield _labelled("shoal_tasks_pending", "Pending tasks by why they are not placed yet.", "reason",
                        dict(reasons))
        yield _labelled("shoal_nodes", "Nodes by their state.", "state", dict(nodes))
        dispatcher = runtime.dispatcher
        yield _gauge("shoal_dispatcher_sessions", "Open worker sessions on this manager's dispatcher (leader only).",
                     dispatcher.session_count if dispatcher is not None else 0)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family
