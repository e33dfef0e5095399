"""manager.orchestrator: the leader's level-triggered control loops (see loop.py).

Run on the leader, one TaskGroup per term:
    restarts, updates = RestartSupervisor(), UpdateSupervisor()
    tg.create_task(ReplicatedOrchestrator(store, clock, restarts, updates).run())
    tg.create_task(GlobalOrchestrator(store, clock, restarts, updates).run())
    tg.create_task(JobOrchestrator(store, clock).run())
    tg.create_task(TaskReaper(store, clock).run())
"""

from manager.orchestrator.clock import Clock, ManualClock, SystemClock
from manager.orchestrator.common import (
    group_by_slot,
    is_task_dirty,
    new_task,
    rollback_service,
    slot_key,
    update_service_spec,
)
from manager.orchestrator.global_orchestrator import GlobalOrchestrator
from manager.orchestrator.jobs import JobOrchestrator
from manager.orchestrator.loop import ReconcileLoop
from manager.orchestrator.reaper import TaskReaper
from manager.orchestrator.replicated import ReplicatedOrchestrator
from manager.orchestrator.restart import RestartSupervisor
from manager.orchestrator.updater import UpdateSupervisor

__all__ = [
    "Clock", "GlobalOrchestrator", "JobOrchestrator", "ManualClock", "ReconcileLoop", "ReplicatedOrchestrator",
    "RestartSupervisor", "SystemClock", "TaskReaper", "UpdateSupervisor", "group_by_slot", "is_task_dirty", "new_task",
    "rollback_service", "slot_key", "update_service_spec",
]
