"""The updater: rolling updates and rollbacks of a service's tasks, slot by slot.

Theory of operation. A slot is dirty when a runnable task in it was made from another spec
than the service's current TaskTemplate. `UpdateSupervisor.step` runs inside the
orchestrator's transaction for one service and moves its update on by one notch:
- in-flight slots are checked: a replacement that has run for the monitor window is a
  success; one that fails (or ends) before that is a failure. With start-first the old
  task is shut down once the replacement runs; with stop-first the old task is shut down
  first and the replacement waits (desired READY) until it has stopped.
- past the max failure ratio the failure action applies: pause (UpdateStatus paused),
  continue, or rollback (PreviousSpec becomes the spec; UpdateStatus rollback_started).
- free lanes (Parallelism, 0 = all at once) take the next dirty slots, each lane waiting
  Delay after its previous slot.
- no dirty slot and nothing in flight: UpdateStatus completed / rollback_completed.
The in-memory run is keyed by the spec being rolled out; a new spec supersedes it cleanly
(slots already replaced are simply dirty again). A paused update stays paused until the
service spec is changed again (the API clears UpdateStatus on update).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from manager.orchestrator.common import SlotKey, group_by_slot, is_task_dirty, new_task, runnable
from manager.specs import UpdateConfig, update_config
from manager.store import WriteTx
from model import Service, Task, TaskState, format_time


@dataclass
class InFlight:
    new_task_id: str
    old_task_ids: list[str]
    running_since: float | None = None


@dataclass
class UpdateRun:
    target: bytes
    rollback: bool
    config: UpdateConfig
    total: int
    failures: int = 0
    done: int = 0
    in_flight: dict[SlotKey, InFlight] = field(default_factory=dict)
    lanes: list[float] = field(default_factory=list)  # when each lane may start its next slot
    last_failed_task: str = ""


BUSY = float("inf")  # a lane whose slot is in flight


def _slot_order(key: SlotKey) -> tuple[int, str]:
    return (key[1], "") if isinstance(key[1], int) else (0, str(key[1]))


class UpdateSupervisor:
    def __init__(self) -> None:
        self.runs: dict[str, UpdateRun] = {}

    def forget(self, service_id: str) -> None:
        self.runs.pop(service_id, None)

    def step(self, tx: WriteTx, service: Service, now: float) -> float | None:
        """Advance this service's update; returns when to look again (or None)."""
        status = service.update_status or {}
        state = status.get("State")
        if state in ("paused", "rollback_paused"):
            self.runs.pop(service.id, None)
            return None
        rollback = state in ("rollback_started", "rollback_paused")
        target = msgpack.packb(service.spec.get("TaskTemplate") or {})
        dirty = self._dirty_slots(tx, service)
        run = self.runs.get(service.id)
        if run is not None and (run.target != target or run.rollback != rollback):
            run = None  # superseded by a newer spec
        if run is None:
            if not dirty:
                if state in ("updating", "rollback_started"):
                    self._finish(tx, service, now, rollback)
                return None
            config = update_config(service.spec, rollback=rollback)
            lanes = config.parallelism or len(dirty)
            run = self.runs[service.id] = UpdateRun(target, rollback, config, len(dirty), lanes=[now] * lanes)
            if state not in ("updating", "rollback_started"):
                self._set_status(tx, service, {"State": "updating", "StartedAt": format_time(now),
                                               "Message": "update in progress"})
        wake: float | None = None

        def later(when: float) -> None:
            nonlocal wake
            wake = when if wake is None else min(wake, when)

        for key, flight in list(run.in_flight.items()):
            outcome = self._check_flight(tx, run, flight, now)
            if outcome is None:
                if flight.running_since is not None:
                    later(flight.running_since + run.config.monitor)
                continue
            del run.in_flight[key]
            run.done += 1
            if outcome is False:
                run.failures += 1
                run.last_failed_task = flight.new_task_id
            run.lanes[run.lanes.index(BUSY)] = now + run.config.delay

        if run.failures and run.failures / max(run.total, 1) > run.config.max_failure_ratio:
            action = run.config.failure_action
            if action == "pause" or (action == "rollback" and (rollback or service.previous_spec is None)):
                self.runs.pop(service.id, None)
                self._set_status(tx, service, {
                    "State": "rollback_paused" if rollback else "paused",
                    "StartedAt": status.get("StartedAt") or format_time(now),
                    "Message": f"{'rollback' if rollback else 'update'} paused due to failure or early "
                               f"termination of task {run.last_failed_task}"})
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
        if not run.in_flight and not waiting:
            self.runs.pop(service.id, None)
            self._finish(tx, service, now, rollback)
            return None
        return wake

    def _dirty_slots(self, tx: WriteTx, service: Service) -> dict[SlotKey, list[Task]]:
        tasks = tx.find("tasks", service_id=service.id)
        slots = group_by_slot(t for t in tasks if runnable(t))
        return {key: ts for key, ts in slots.items() if any(is_task_dirty(service, t) for t in ts)}

    def _check_flight(self, tx: WriteTx, run: UpdateRun, flight: InFlight, now: float) -> bool | None:
        """True: the slot is done; False: it failed; None: still going."""
        task = tx.get("tasks", flight.new_task_id)
        if task is None or (task.desired_state > TaskState.RUNNING and task.status.state <= TaskState.RUNNING):
            return True  # removed (scale down, service change): nothing to judge
        if task.status.state > TaskState.RUNNING:
            return False
        if task.status.state == TaskState.RUNNING:
            if flight.running_since is None:
                flight.running_since = now
            if run.config.order == "start-first":
                for old_id in flight.old_task_ids:
                    old = tx.get("tasks", old_id)
                    if old is not None and runnable(old):
                        old = old.copy()
                        old.set_desired_state(TaskState.SHUTDOWN)
                        tx.update(old)
            if now >= flight.running_since + run.config.monitor:
                return True
        return None

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

    def _set_status(self, tx: WriteTx, service: Service, status: dict) -> None:
        current = tx.get("services", service.id)
        updated = current.copy()
        updated.update_status = status
        tx.update(updated)

    def _finish(self, tx: WriteTx, service: Service, now: float, rollback: bool) -> None:
        started = (service.update_status or {}).get("StartedAt") or format_time(now)
        self._set_status(tx, service, {
            "State": "rollback_completed" if rollback else "completed", "StartedAt": started,
            "CompletedAt": format_time(now), "Message": "rollback completed" if rollback else "update completed"})

    def _start_rollback(self, tx: WriteTx, service: Service, now: float, failed_task: str) -> None:
        current = tx.get("services", service.id).copy()
        current.spec, current.previous_spec = current.previous_spec, None
        current.update_status = {
            "State": "rollback_started", "StartedAt": format_time(now),
            "Message": f"update rolled back due to failure or early termination of task {failed_task}"}
        tx.update(current)
