"""The job orchestrator: replicated and global jobs run their tasks to completion.

A job service runs in iterations: the API starts iteration 0 at create and the next one at each
update (`JobStatus.JobIteration.Index`). Each task carries the iteration it was made for and has
desired state COMPLETE: run until it exits, never to be kept running. Per service, in one
transaction:
- tasks of an older iteration that have not finished are shut down;
- **replicated job** (`MaxConcurrent`, default 1; `TotalCompletions`, default MaxConcurrent):
  slots 0..TotalCompletions-1 (numbered from 0, as Docker's CLI expects). A slot is done
  once one of its tasks completed (exit 0), active while it holds an unfinished task, given
  up once its restart policy allows no new attempt, and otherwise free. Free slots, lowest
  first, get a task while fewer than MaxConcurrent are active;
- **global job**: one task on every eligible node (ready, active, matching the constraints),
  nodes that join during the iteration included; a node that finished its task is done;
- a task that failed (or whose node went down, for a replicated job) is retried per the
  restart policy: condition `none` never, `on-failure` and `any` after a failure (a completed
  task is never re-run), at most MaxAttempts times within Window, not before Delay has passed
  (kept in memory, like the restart supervisor's history: a new leader counts afresh); the same
  rejection over and over waits longer each time, as for services (`restart.rejection_delay`).
  Slot 0 is a real slot here, unlike for replicated services, so attempts are kept per
  (service, slot) by this loop rather than by the restart supervisor's slot keys.
"""

from __future__ import annotations

from manager.orchestrator.clock import Clock
from manager.orchestrator.common import earliest, new_task, node_is_down
from manager.orchestrator.global_orchestrator import node_fits
from manager.orchestrator.loop import ReconcileLoop
from manager.orchestrator.restart import RepeatedRejections
from manager.specs import restart_policy
from manager.store import Store, WriteTx
from model import Service, Task, TaskState

_COMPLETE, _RUNNING, _SHUTDOWN = TaskState.COMPLETE, TaskState.RUNNING, TaskState.SHUTDOWN
JOB_MODES = ("replicated-job", "global-job")


def job_iteration(service: Service) -> int:
    return int(((service.job_status or {}).get("JobIteration") or {}).get("Index", 0))


def task_iteration(task: Task) -> int | None:
    return None if task.job_iteration is None else int(task.job_iteration.get("Index", 0))


def replicated_job_sizes(service: Service) -> tuple[int, int]:
    """(MaxConcurrent, TotalCompletions) with Docker's defaults."""
    job = (service.spec.get("Mode") or {}).get("ReplicatedJob") or {}
    max_concurrent = int(job.get("MaxConcurrent") or 1)
    return max_concurrent, int(job.get("TotalCompletions") or max_concurrent)


def _unfinished(task: Task) -> bool:
    return task.status.state <= _RUNNING and task.desired_state < _SHUTDOWN


def _stop(tx: WriteTx, task: Task) -> None:
    stopped = task.copy()
    stopped.set_desired_state(_SHUTDOWN)
    tx.update(stopped)


class JobOrchestrator(ReconcileLoop):
    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        super().__init__(store, clock)
        # (service, slot or node) -> when the next attempt may start / when attempts were made
        self.retry_at: dict[tuple[str, int | str], float] = {}
        self.attempts: dict[tuple[str, int | str], list[float]] = {}
        self.rejections = RepeatedRejections()

    def reconcile_service(self, tx: WriteTx, service_id: str, now: float) -> float | None:
        service = tx.get("services", service_id)
        if service is None or service.mode not in JOB_MODES:
            return None
        iteration = job_iteration(service)
        current: list[Task] = []
        for task in tx.find("tasks", service_id=service_id):
            if task_iteration(task) == iteration:
                current.append(task)
            elif _unfinished(task):
                _stop(tx, task)          # superseded by a newer iteration
        if service.mode == "replicated-job":
            return self._replicated(tx, service, iteration, current, now)
        return self._global(tx, service, iteration, current, now)

    # -- replicated jobs ------------------------------------------------------------------------
    def _replicated(self, tx: WriteTx, service: Service, iteration: int, tasks: list[Task],
                    now: float) -> float | None:
        max_concurrent, total = replicated_job_sizes(service)
        by_slot: dict[int, list[Task]] = {}
        for task in tasks:
            by_slot.setdefault(task.slot, []).append(task)
        active, free, wake = 0, [], None
        for slot in range(total):
            state, when = self._slot_state(tx, service, slot, by_slot.get(slot, []), now)
            if state == "active":
                active += 1
            elif state == "free":
                free.append(slot)
            elif state == "waiting":
                wake = earliest(wake, when)
        for slot in free[:max(0, max_concurrent - active)]:
            self._create(tx, service, iteration, now, slot=slot)
        return wake

    def _slot_state(self, tx: WriteTx, service: Service, slot: int, tasks: list[Task],
                    now: float) -> tuple[str, float | None]:
        """done | active | free | waiting (a retry delay, with when) | given-up."""
        if any(t.status.state == _COMPLETE for t in tasks):
            return "done", None
        for task in tasks:
            if not _unfinished(task):
                continue
            if task.node_id and node_is_down(tx.get("nodes", task.node_id)):
                _stop(tx, task)          # its node is gone: the slot is retried elsewhere
                return self._after_failure(service, task, slot, now, count=False)
            return "active", None
        if not tasks:
            return "free", None
        return self._after_failure(service, tasks[-1], slot, now)    # every task of it failed

    # -- global jobs ----------------------------------------------------------------------------
    def _global(self, tx: WriteTx, service: Service, iteration: int, tasks: list[Task],
                now: float) -> float | None:
        by_node: dict[str, list[Task]] = {}
        for task in tasks:
            by_node.setdefault(task.node_id, []).append(task)
        wake = None
        for node in tx.all("nodes"):
            if node_is_down(node) or node.availability != "active" or not node_fits(service, node):
                continue
            mine = by_node.get(node.id, [])
            if any(t.status.state == _COMPLETE for t in mine) or any(_unfinished(t) for t in mine):
                continue
            if mine:
                state, when = self._after_failure(service, mine[-1], node.id, now)
                if state == "waiting":
                    wake = earliest(wake, when)
                if state != "free":
                    continue
            self._create(tx, service, iteration, now, node_id=node.id)
        return wake

    # -- shared ---------------------------------------------------------------------------------
    def _after_failure(self, service: Service, last: Task, where: int | str, now: float,
                       count: bool = True) -> tuple[str, float | None]:
        """Whether the slot (or node) whose latest task failed gets another attempt, and when."""
        key = (service.id, where)
        due = self.retry_at.get(key)
        if due is None:
            policy = restart_policy(service.spec.get("TaskTemplate") or {})
            delay = 0.0
            if count:
                attempts = self.attempts.setdefault(key, [])
                if policy.window > 0:
                    attempts[:] = [t for t in attempts if t > now - policy.window]
                if policy.condition == "none" or (0 < policy.max_attempts <= len(attempts)):
                    return "given-up", None
                attempts.append(now)
                delay = self.rejections.delay(key, last, policy.delay)
            due = self.retry_at[key] = now + delay
        if due > now:
            return "waiting", due
        return "free", None

    def _create(self, tx: WriteTx, service: Service, iteration: int, now: float, *, slot: int = 0,
                node_id: str = "") -> None:
        self.retry_at.pop((service.id, node_id or slot), None)
        task = new_task(service, now, slot=slot, node_id=node_id, desired=_COMPLETE)
        task.job_iteration = {"Index": iteration}
        tx.create(task)
