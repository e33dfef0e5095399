"""The reconcilers a leader runs for one term: orchestrators, the task reaper, the network allocator
(NEW -> PENDING, with addresses), the scheduler (PENDING -> ASSIGNED) and the root CA rotation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from manager.allocator import Allocator
from manager.orchestrator import (
    GlobalOrchestrator,
    JobOrchestrator,
    ReplicatedOrchestrator,
    RestartSupervisor,
    SystemClock,
    TaskReaper,
    UpdateSupervisor,
)
from manager.scheduler import Scheduler
from manager.store import Store
from manager.swarm.ca_rotation import RootRotation
from model import Task


class Orchestration:
    """Owns one term's reconcilers; they share the restart and update supervisors."""

    def __init__(self, store: Store, on_assigned: Callable[[Task], None] | None = None) -> None:
        self._store = store
        self._on_assigned = on_assigned     # the scheduler's hook (metrics)

    async def run(self) -> None:
        clock = SystemClock()
        restarts, updates = RestartSupervisor(), UpdateSupervisor()
        async with asyncio.TaskGroup() as group:
            group.create_task(ReplicatedOrchestrator(self._store, clock, restarts, updates).run(), name="replicated")
            group.create_task(GlobalOrchestrator(self._store, clock, restarts, updates).run(), name="global")
            group.create_task(JobOrchestrator(self._store, clock).run(), name="jobs")
            group.create_task(TaskReaper(self._store, clock).run(), name="reaper")
            group.create_task(Allocator(self._store).run(), name="allocator")
            group.create_task(Scheduler(self._store, on_assigned=self._on_assigned).run(), name="scheduler")
            group.create_task(RootRotation(self._store).run(), name="root-rotation")
