"""The restart supervisor: decides whether a finished task is replaced, and when the
replacement may start.

Policy (from the service's TaskTemplate.RestartPolicy): condition `none` never restarts,
`on-failure` restarts unless the task completed (exit 0), `any` always; at most MaxAttempts
restarts per slot within Window (0 = ever). A replacement is created with desired state
READY when the policy has a delay, and promoted to RUNNING once the delay has passed and
every other task of its slot has stopped. Tasks moved off a down or drained node are
replaced at once and do not count as attempts. Restart history lives in memory only: a new
leader starts counting afresh (as its delays do).
"""

from __future__ import annotations

from manager.orchestrator.common import SlotKey, earliest, new_task, slot_key, task_stopped
from manager.specs import restart_policy
from manager.store import WriteTx
from model import Service, Task, TaskState


class RestartSupervisor:
    def __init__(self) -> None:
        self.history: dict[SlotKey, list[float]] = {}
        self.delayed_until: dict[str, float] = {}  # READY task id -> when it may start

    def should_restart(self, service: Service, task: Task, now: float) -> bool:
        policy = restart_policy(service.spec.get("TaskTemplate") or {})
        if policy.condition == "none":
            return False
        if policy.condition == "on-failure" and task.status.state == TaskState.COMPLETE:
            return False
        if policy.max_attempts > 0:
            attempts = self.history.get(slot_key(task), [])
            if policy.window > 0:
                attempts = [t for t in attempts if t > now - policy.window]
                self.history[slot_key(task)] = attempts
            if len(attempts) >= policy.max_attempts:
                return False
        return True

    def restart(self, tx: WriteTx, service: Service, task: Task, now: float, moved: bool = False) -> Task | None:
        """Shut `task` down and, if the policy allows (always when `moved` off a bad node),
        create its replacement. Returns the replacement, or None."""
        if not moved and not self.should_restart(service, task, now):
            return None
        old = task.copy()
        old.set_desired_state(TaskState.SHUTDOWN)
        tx.update(old)
        delay = 0.0 if moved else restart_policy(service.spec.get("TaskTemplate") or {}).delay
        slot = task.slot
        node_id = task.node_id if not task.slot else ""
        replacement = new_task(service, now, slot=slot, node_id=node_id,
                               desired=TaskState.READY if delay > 0 else TaskState.RUNNING)
        if not moved:
            self.history.setdefault(slot_key(task), []).append(now)
        if delay > 0:
            self.delayed_until[replacement.id] = now + delay
        tx.create(replacement)
        return replacement

    def promote_ready(self, tx: WriteTx, slot_tasks: list[Task], now: float) -> float | None:
        """Start READY tasks whose delay is over and whose slot-mates have stopped.
        Returns when to look again (a pending delay), or None."""
        wake: float | None = None
        for task in slot_tasks:
            if task.desired_state != TaskState.READY:
                continue
            due = self.delayed_until.get(task.id, now)
            if due > now:
                wake = earliest(wake, due)
                continue
            others = [t for t in slot_tasks if t.id != task.id and t.desired_state != TaskState.READY]
            if all(task_stopped(t, tx) for t in others):
                promoted = task.copy()
                promoted.set_desired_state(TaskState.RUNNING)
                tx.update(promoted)
                self.delayed_until.pop(task.id, None)
        return wake

    def forget(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.delayed_until.pop(task_id, None)
