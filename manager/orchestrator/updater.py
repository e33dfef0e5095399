"""The updater: rolling updates and rollbacks of a service's tasks, slot by slot.

Theory of operation. A slot is dirty when a runnable task in it was made from another spec
than the service's current TaskTemplate. `UpdateSupervisor.step` runs inside the
orchestrator's transaction for one service and moves its update on by one notch:
- in-flight slots are checked. A lane (Parallelism of them, 0 = all at once) is busy from
  the moment its slot is started until the replacement is RUNNING (or has failed); it is
  then free again after Delay. With start-first the old task is shut down once the
  replacement runs; with stop-first the old task is shut down first and the replacement
  waits (desired READY) until it has stopped.
- a replacement that runs is then *watched* until its Monitor window (counted from when
  it was seen running) is over: failing or ending within the window is a failure, exactly
  as failing before it ran. The window never holds a lane.
- past the max failure ratio (failures / slots to update) the failure action applies:
  pause (UpdateStatus paused), continue, or rollback (PreviousSpec becomes the spec;
  UpdateStatus rollback_started).
- no dirty slot, nothing in flight and nothing watched (every replacement has passed its
  window): UpdateStatus completed / rollback_completed.
The in-memory run is keyed by the spec being rolled out; a new spec supersedes it cleanly
(slots already replaced are simply dirty again). A paused update stays paused until the
service spec is changed again (the API clears UpdateStatus on update).
Every UpdateStatus write goes through the table in model/update_state.py, checked against the
service as stored in this transaction: an illegal move is a bug here, so it raises, the
transaction is dropped and the orchestrator loop logs it and retries the service later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from manager.orchestrator.common import (
    SlotKey,
    earliest,
    endpoint_dirty,
    endpoint_needs,
    group_by_slot,
    new_task,
    runnable,
    slot_key,
)
from manager.specs import UpdateConfig, update_config
from manager.store import WriteTx
from model import Service, Task, TaskState, UpdateState, format_time

# Update states bound once (see TaskState in common.py).
_UPDATING, _PAUSED, _COMPLETED = UpdateState.UPDATING, UpdateState.PAUSED, UpdateState.COMPLETED
_ROLLBACK_STARTED, _ROLLBACK_PAUSED, _ROLLBACK_COMPLETED = (
    UpdateState.ROLLBACK_STARTED, UpdateState.ROLLBACK_PAUSED, UpdateState.ROLLBACK_COMPLETED)


@dataclass
class InFlight:
    new_task_id: str
    old_task_ids: list[str]


@dataclass
class UpdateRun:
    target: bytes
    rollback: bool
    config: UpdateConfig
    total: int
    failures: int = 0
    done: int = 0  # slots whose replacement ran through its monitor window (or was removed)
    in_flight: dict[SlotKey, InFlight] = field(default_factory=dict)  # each holds a lane
    watched: dict[str, float] = field(default_factory=dict)  # running replacement -> end of its window
    lanes: list[float] = field(default_factory=list)  # when each lane may start its next slot
    last_failed_task: str = ""

    def fail(self, task_id: str) -> None:
        self.failures += 1
        self.last_failed_task = task_id


BUSY = float("inf")  # a lane whose slot is in flight

# What became of an updated slot's replacement task (see `_judge`).
RUNNING, FAILED, REMOVED = "running", "failed", "removed"


def _judge(task: Task | None) -> str | None:
    """RUNNING, FAILED (failed or ended by itself), REMOVED (deleted, or stopped on purpose by
    a manager: scale down, drain, node down, a newer spec), or None (not running yet)."""
    if task is None:
        return REMOVED
    state = task.status.state
    if task.desired_state > TaskState.RUNNING and (state <= TaskState.RUNNING or state == TaskState.SHUTDOWN):
        return REMOVED
    if state > TaskState.RUNNING:
        return FAILED
    return RUNNING if state == TaskState.RUNNING else None


def _slot_order(key: SlotKey) -> tuple[int, str]:
    return (key[1], "") if isinstance(key[1], int) else (0, str(key[1]))


class UpdateSupervisor:
    def __init__(self) -> None:
        self.runs: dict[str, UpdateRun] = {}

    def forget(self, service_id: str) -> None:
        self.runs.pop(service_id, None)

    def step(self, tx: WriteTx, service: Service, now: float) -> float | None:
        """Advance this service's update; returns when to look again (or None)."""
        state = service.update_state
        if state in (_PAUSED, _ROLLBACK_PAUSED):
            self.runs.pop(service.id, None)
            return None
        rollback = state is _ROLLBACK_STARTED
        target = msgpack.packb(service.spec.get("TaskTemplate") or {})
        dirty = self._dirty_slots(tx, service)
        run = self.runs.get(service.id)
        if run is not None and (run.target != target or run.rollback != rollback):
            run = None  # superseded by a newer spec
        if run is None:
            if not dirty:
                if state in (_UPDATING, _ROLLBACK_STARTED):
                    self._finish(tx, service, now, rollback)
                return None
            config = update_config(service.spec, rollback=rollback)
            lanes = config.parallelism or len(dirty)
            run = self.runs[service.id] = UpdateRun(target, rollback, config, len(dirty), lanes=[now] * lanes)
        if state not in (_UPDATING, _ROLLBACK_STARTED):
            # A new rollout, or one whose status a spec change that left the TaskTemplate alone
            # (a scale) cleared meanwhile: mark it in progress, as swarmkit's fresh updater does.
            self._set_status(tx, service, _UPDATING, "update in progress", now, restart=True)
        wake: float | None = None

        def later(when: float) -> None:
            nonlocal wake
            wake = earliest(wake, when)

        for key, flight in list(run.in_flight.items()):
            outcome = self._check_flight(tx, run, flight)
            if outcome is None:
                continue
            del run.in_flight[key]
            run.lanes[run.lanes.index(BUSY)] = now + run.config.delay
            if outcome == FAILED:
                run.fail(flight.new_task_id)
            elif outcome == RUNNING:
                run.watched[flight.new_task_id] = now + run.config.monitor
            else:
                run.done += 1
        for task_id, window_end in list(run.watched.items()):
            outcome = _judge(tx.get("tasks", task_id))
            if outcome == FAILED:
                del run.watched[task_id]
                run.fail(task_id)
            elif outcome == REMOVED or now >= window_end:
                del run.watched[task_id]
                run.done += 1
            else:
                later(window_end)

        if run.failures and run.failures / max(run.total, 1) > run.config.max_failure_ratio:
            action = run.config.failure_action
            if action == "pause" or (action == "rollback" and (rollback or service.previous_spec is None)):
                self.runs.pop(service.id, None)
                self._set_status(tx, service, _ROLLBACK_PAUSED if rollback else _PAUSED,
                                 f"{'rollback' if rollback else 'update'} paused due to failure or early "
                                 f"termination of task {run.last_failed_task}", now)
                return None
            if action == "rollback":
                self.runs.pop(service.id, None)
                self._start_rollback(tx, service, now, run.last_failed_task)
                return now

        dirty = self._dirty_slots(tx, service)  # this step's own writes included
        waiting = sorted((k for k in dirty if k not in run.in_flight), key=_slot_order)
        while waiting:
            free = [i for i, t in enumerate(run.lanes) if t <= now]
            if not free:
                resting = [t for t in run.lanes if t != BUSY]
                if resting:
                    later(min(resting))
                break
            key = waiting.pop(0)
            run.lanes[free[0]] = BUSY
            run.in_flight[key] = self._start_slot(tx, service, dirty[key], run.config, now)
        if not run.in_flight and not waiting and not run.watched:
            self.runs.pop(service.id, None)
            self._finish(tx, service, now, rollback)
            return None
        return wake

    def _dirty_slots(self, tx: WriteTx, service: Service) -> dict[SlotKey, list[Task]]:
        """The runnable tasks of each slot holding a runnable task made from another spec."""
        template = service.spec.get("TaskTemplate") or {}
        running = TaskState.RUNNING  # bound once: an Enum member lookup per task is not free
        live = [t for t in tx.find("tasks", service_id=service.id) if t.desired_state <= running]
        needs = endpoint_needs(service)
        dirty_keys = {slot_key(t) for t in live                                                 # is_task_dirty
                      if (t.spec is not template and t.spec != template) or endpoint_dirty(needs, t)}
        if not dirty_keys:
            return {}
        return group_by_slot(t for t in live if slot_key(t) in dirty_keys)

    def _check_flight(self, tx: WriteTx, run: UpdateRun, flight: InFlight) -> str | None:
        """RUNNING: the replacement runs (its lane is free, its window starts); FAILED: it
        failed or ended before running; REMOVED: it was stopped on purpose; None: still starting."""
        task = tx.get("tasks", flight.new_task_id)
        outcome = _judge(task)
        if outcome == RUNNING and run.config.order == "start-first":
            for old_id in flight.old_task_ids:
                old = tx.get("tasks", old_id)
                if old is not None and runnable(old):
                    old = old.copy()
                    old.set_desired_state(TaskState.SHUTDOWN)
                    tx.update(old)
        return outcome

    def _start_slot(self, tx: WriteTx, service: Service, slot_tasks: list[Task], config: UpdateConfig,
                    now: float) -> InFlight:
        first = slot_tasks[0]
        start_first = config.order == "start-first"
        replacement = new_task(service, now, slot=first.slot, node_id="" if first.slot else first.node_id,
                               desired=TaskState.RUNNING if start_first else TaskState.READY)
        if not start_first:
            for old in slot_tasks:
                stopped = old.copy()
                stopped.set_desired_state(TaskState.SHUTDOWN)
                tx.update(stopped)
        tx.create(replacement)
        return InFlight(replacement.id, [t.id for t in slot_tasks])

    def _set_status(self, tx: WriteTx, service: Service, state: UpdateState, message: str, now: float,
                    restart: bool = False, complete: bool = False) -> None:
        """Move the stored service's UpdateStatus to `state`. StartedAt is kept unless `restart`;
        CompletedAt is set when `complete`. An illegal move raises (see the module comment)."""
        updated = tx.get("services", service.id).copy()
        started = None if restart else (updated.update_status or {}).get("StartedAt")
        updated.set_update_status(state, message, started_at=started or format_time(now),
                                  completed_at=format_time(now) if complete else "")
        tx.update(updated)

    def _finish(self, tx: WriteTx, service: Service, now: float, rollback: bool) -> None:
        self._set_status(tx, service, _ROLLBACK_COMPLETED if rollback else _COMPLETED,
                         "rollback completed" if rollback else "update completed", now, complete=True)

    def _start_rollback(self, tx: WriteTx, service: Service, now: float, failed_task: str) -> None:
        current = tx.get("services", service.id).copy()
        current.set_update_status(
            _ROLLBACK_STARTED, f"update rolled back due to failure or early termination of task {failed_task}",
            started_at=format_time(now))
        current.spec, current.previous_spec = current.previous_spec, None
        tx.update(current)
