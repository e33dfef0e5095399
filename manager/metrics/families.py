"""The manager's event-fed metric families and the hooks that feed them.

Theory of operation: the components stay free of Prometheus. Each takes a plain callable (or,
for Raft, the `fsync` and `on_leader_change` options of its driver) and this module hands it one
that observes into a family of the daemon's own registry, never the process-global one (tests
run several daemons in one process). Figures that are a reading of current state (term,
indexes, objects, tasks) are not kept here: the collector reads them at scrape time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from manager.store import Proposer
from model import Task, parse_time
from raft.node import NodeOptions

# Buckets in seconds: an fsync is sub-millisecond to tens of ms; a commit a few ms to seconds.
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
PROPOSAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCHEDULING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ManagerMetrics:
    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.leader_changes = Counter(
            "shoal_raft_leader_changes", "Times this manager saw a new Raft leader (the first one included).",
            registry=registry)
        self.proposal_seconds = Histogram(
            "shoal_raft_proposal_seconds", "Store writes proposed through Raft: seconds until committed and "
            "applied here.", registry=registry, buckets=PROPOSAL_BUCKETS)
        self.fsync_seconds = Histogram(
            "shoal_raft_fsync_seconds", "Seconds per fsync of the Raft log and snapshots.",
            registry=registry, buckets=FSYNC_BUCKETS)
        self.scheduling_seconds = Histogram(
            "shoal_scheduler_latency_seconds", "Seconds from a task's creation to its assignment to a node.",
            registry=registry, buckets=SCHEDULING_BUCKETS)
        self.heartbeat_misses = Counter(
            "shoal_dispatcher_heartbeat_misses", "Nodes this manager, as leader, marked down for missed heartbeats.",
            registry=registry)
        self._leader = 0

    # ---- hooks ----------------------------------------------------------------------------------
    def instrument_raft(self, options: NodeOptions) -> None:
        """Time the Raft log's fsyncs and count leader changes (the driver's own hooks)."""
        sync = options.fsync or os.fsync
        observe = self.fsync_seconds.observe

        def timed_fsync(fd: int) -> None:
            start = time.perf_counter()
            try:
                sync(fd)
            finally:
                observe(time.perf_counter() - start)

        options.fsync = timed_fsync
        options.on_leader_change = self.leader_changed

    def leader_changed(self, leader: int) -> None:
        if leader and leader != self._leader:     # 0 is "no leader known", not a new leader
            self.leader_changes.inc()
            self._leader = leader

    def task_assigned(self, task: Task) -> None:
        if task.created_at:
            self.scheduling_seconds.observe(max(0.0, self._clock() - parse_time(task.created_at)))

    def heartbeat_missed(self) -> None:
        self.heartbeat_misses.inc()


class TimedProposer:
    """A store proposer that times each proposal (commit and local apply) into a histogram."""

    def __init__(self, inner: Proposer, histogram: Histogram) -> None:
        self._inner = inner
        self._histogram = histogram

    async def propose(self, data: bytes) -> None:
        start = time.perf_counter()
        await self._inner.propose(data)
        self._histogram.observe(time.perf_counter() - start)
