"""The task reaper: deletes tasks nobody needs any more, and orphans tasks of lost nodes.

Rules, per service:
- tasks of a deleted service are set to desired REMOVE;
- a task still live on a node that was removed from the swarm becomes ORPHANED (the one
  status a manager writes, as the worker is gone for good);
- a task with desired REMOVE is deleted once it has stopped;
- per slot (slot number, or node for global services) at most TaskHistoryRetentionLimit
  tasks are kept (cluster spec, default 5; negative: keep all): the oldest stopped,
  no-longer-wanted ones go first. Runnable tasks are never deleted.
"""

from __future__ import annotations

from manager.orchestrator.common import group_by_slot, history_limit, runnable, task_stopped
from manager.orchestrator.loop import ReconcileLoop
from manager.store import WriteTx
from model import TaskState, format_time

# Task states bound once: reading a member off the Enum class costs ~70 ns, and these
# comparisons run for every task of every write.
_ORPHANED, _REMOVE, _RUNNING, _SHUTDOWN = TaskState.ORPHANED, TaskState.REMOVE, TaskState.RUNNING, TaskState.SHUTDOWN

class TaskReaper(ReconcileLoop):
    tables = ("services", "tasks", "nodes", "clusters")

    def service_ids(self, tx: WriteTx | None = None) -> set[str]:
        return self.store.view(lambda tx: {t.service_id for t in tx.all("tasks")}) | set(self.wakes)

    def reconcile_service(self, tx: WriteTx, service_id: str, now: float) -> float | None:
        service = tx.get("services", service_id)
        stamp = format_time(now)
        node_gone: dict[str, bool] = {}  # node ID -> removed from the swarm (read once per round)
        for task in tx.find("tasks", service_id=service_id):
            changed = None
            # a standalone container's network attachment has no service: its node detaches it
            # (it is orphaned below only if its node left the swarm)
            attachment = not service_id and "NetworkAttachmentSpec" in task.spec
            # running, or a job's running to COMPLETE
            if service is None and task.desired_state < _SHUTDOWN and not attachment:
                changed = task.copy()
                changed.set_desired_state(_REMOVE)
            gone = False
            if task.node_id and task.status.state <= _RUNNING:
                known = node_gone.get(task.node_id)
                if known is None:
                    known = node_gone[task.node_id] = tx.get("nodes", task.node_id) is None
                gone = known
            if gone:
                changed = changed or task.copy()
                changed.status.advance(_ORPHANED, stamp, "task orphaned: its node left the swarm")
                if runnable(changed):
                    changed.set_desired_state(_SHUTDOWN)
            if changed is not None:
                tx.update(changed)
        tasks = tx.find("tasks", service_id=service_id)
        if all(task.desired_state <= _RUNNING for task in tasks):
            return None  # every task runnable: nothing to delete (runnable tasks are never deleted)
        limit = history_limit(tx)
        for slot_tasks in group_by_slot(tasks).values():
            if all(runnable(task) for task in slot_tasks):
                continue  # runnable tasks are never deleted
            keep = len(slot_tasks)
            for task in sorted(slot_tasks, key=lambda t: (t.created_at, t.version)):
                if runnable(task) or not task_stopped(task, tx):
                    continue
                if task.desired_state >= _REMOVE or (limit >= 0 and keep > limit):
                    tx.delete("tasks", task.id)
                    keep -= 1
        return None
