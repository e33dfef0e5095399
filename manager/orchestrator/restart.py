"""The restart supervisor: decides whether a finished task is replaced, and when the
replacement may start.

Policy (from the service's TaskTemplate.RestartPolicy): condition `none` never restarts,
`on-failure` restarts unless the task completed (exit 0), `any` always; at most MaxAttempts
restarts per slot within Window (0 = ever). A replacement is created with desired state
READY when the policy has a delay, and promoted to RUNNING once the delay has passed and
every other task of its slot has stopped. Tasks moved off a down or drained node are
replaced at once and do not count as attempts. Restart history lives in memory only: a new
leader starts counting afresh (as its delays do).

No restart storm (rejected tasks, e.g. an image that cannot be pulled):
- A replacement waiting out its delay (desired READY) is still prepared by its worker, so it
  may be rejected before the delay is over. It is then replaced only once its own delay has
  passed, as swarmkit does ("wait for its restart delay to elapse, to avoid tight restart
  loops"): `restart` returns the time to look again instead. So a slot makes at most one new
  task per delay, however fast its tasks fail.
- The same rejection over and over backs off further. The n-th rejection in a row of a slot
  with the same error for the same task spec waits (`rejection_delay`):
      n = 1: the policy's delay (Docker's behaviour; 5 s by default)
      n >= 2: min(max(delay, 1 s) * 2^(n-1), max(delay, 300 s))
  With the default 5 s: 5, 10, 20, 40, 80, 160, 300, 300, ... seconds between new tasks, so a
  typo in an image name makes 8 tasks in its first 10 minutes and then one per 5 minutes,
  where Docker makes one every 5 s. A different error, a changed spec, or a task of the slot
  that got past preparing (ended any other way) starts the count again.
"""

from __future__ import annotations

from manager.orchestrator.common import SlotKey, earliest, new_task, slot_key, task_stopped
from manager.specs import restart_policy
from manager.store import WriteTx
from model import Service, Task, TaskState

REJECTION_BACKOFF_BASE = 1.0       # seconds: the least a repeated rejection doubles from
REJECTION_BACKOFF_CEILING = 300.0  # seconds: the longest it waits (unless the policy's delay is longer)


def rejection_delay(policy_delay: float, rejections: int) -> float:
    """How long the replacement of a slot's `rejections`-th rejection in a row waits."""
    if rejections <= 1:
        return policy_delay
    grown = max(policy_delay, REJECTION_BACKOFF_BASE) * 2 ** (rejections - 1)
    return min(grown, max(policy_delay, REJECTION_BACKOFF_CEILING))


class RepeatedRejections:
    """Per slot, how many of its tasks in a row were rejected with the same error, for the same
    task spec."""

    def __init__(self) -> None:
        self._last: dict[SlotKey, tuple[str, object, int]] = {}   # slot -> (error, spec, count)

    def delay(self, key: SlotKey, task: Task, policy_delay: float) -> float:
        """The restart delay for `task`, which ended and is being replaced."""
        if task.status.state != TaskState.REJECTED:
            self._last.pop(key, None)
            return policy_delay
        error = task.status.err
        last = self._last.get(key)
        count = last[2] + 1 if last is not None and last[0] == error and last[1] == task.spec else 1
        self._last[key] = (error, task.spec, count)
        return rejection_delay(policy_delay, count)

    def count(self, key: SlotKey) -> int:
        last = self._last.get(key)
        return last[2] if last is not None else 0


class RestartSupervisor:
    def __init__(self) -> None:
        self.history: dict[SlotKey, list[float]] = {}
        self.delayed_until: dict[str, float] = {}  # READY task id -> when it may start
        self.rejections = RepeatedRejections()

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

    def restart(self, tx: WriteTx, service: Service, task: Task, now: float, moved: bool = False) -> float | None:
        """Shut `task` down and, if the policy allows (always when `moved` off a bad node),
        create its replacement. A task that ended while waiting out its own restart delay is
        left as it is until that delay has passed: the time to look again is returned then
        (None otherwise)."""
        due = self.delayed_until.get(task.id)
        if not moved and due is not None and due > now:
            return due
        self.delayed_until.pop(task.id, None)
        if not moved and not self.should_restart(service, task, now):
            return None
        old = task.copy()
        old.set_desired_state(TaskState.SHUTDOWN)
        tx.update(old)
        delay = 0.0
        if not moved:
            policy_delay = restart_policy(service.spec.get("TaskTemplate") or {}).delay
            delay = self.rejections.delay(slot_key(task), task, policy_delay)
        slot = task.slot
        node_id = task.node_id if not task.slot else ""
        replacement = new_task(service, now, slot=slot, node_id=node_id,
                               desired=TaskState.READY if delay > 0 else TaskState.RUNNING)
        if not moved:
            self.history.setdefault(slot_key(task), []).append(now)
        if delay > 0:
            self.delayed_until[replacement.id] = now + delay
        tx.create(replacement)
        return None

    def promote_ready(self, tx: WriteTx, slot_tasks: list[Task], now: float) -> float | None:
        """Start READY tasks whose delay is over and whose slot-mates have stopped.
        Returns when to look again (a pending delay), or None."""
        wake: float | None = None
        for task in slot_tasks:
            if task.desired_state != TaskState.READY or task.status.state > TaskState.RUNNING:
                continue    # an ended task is the restart pass's, once its delay is over
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
