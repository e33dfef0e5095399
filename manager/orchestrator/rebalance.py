"""Rebalancing: moving a replicated service's tasks to even out their spread over the nodes.

Docker swarm never moves a running task back onto a node that joins or becomes active
(moby/swarmkit#310). Here a service is rebalanced when the swarm asks for it
(`Spec.Orchestration.Rebalance`, `shoal swarm init/update --rebalance`) or the service does
(its label `com.shoal.rebalance`, set to a new request by `shoal service update --rebalance`;
a request is done once the service is found balanced).

Theory of operation. `RebalanceSupervisor.step` runs inside the replicated orchestrator's
transaction for one service, after the updater, and moves the rebalance on by one notch:
- it acts only on a settled service: replicated, no rolling update or rollback under way, every
  wanted task RUNNING and made from the current spec, no placement constraints, preferences
  or per-node maximum (where a task may go is then the scheduler's business alone);
- the eligible nodes are the ready, active ones. Balanced means the most loaded has at most
  one task more than the least loaded; a task on a node that is not eligible is the
  orchestrator's to replace, not this module's;
- one move at a time, start-first: a new task is made in the slot of a task on the most loaded
  node (the scheduler's spread puts it on the node with the fewest tasks of the service); once
  it RUNS, the old task is shut down. So the service never has fewer running tasks than it
  wants. A replacement that fails or is stopped ends the move and leaves the old task be;
- after each move the service's UpdateConfig.Delay passes before the next one.
A move in flight lives in memory: a new leader finds a slot with two tasks, waits until both
run, then shuts the older one down (the move finished), so a failover costs no running task.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from manager.orchestrator.common import group_by_slot, is_task_dirty, new_task, runnable
from manager.specs import update_config
from manager.store import WriteTx
from model import NodeState, Service, Task, TaskState, UpdateState

REQUEST_LABEL = "com.shoal.rebalance"
_RUNNING, _SHUTDOWN = TaskState.RUNNING, TaskState.SHUTDOWN
_ROLLING = (UpdateState.UPDATING, UpdateState.ROLLBACK_STARTED)


@dataclass
class Move:
    new_task_id: str
    old_task_id: str


def swarm_wide(tx: WriteTx) -> bool:
    """Does the swarm ask for rebalancing (Spec.Orchestration.Rebalance)?"""
    clusters = tx.all("clusters")
    return bool(clusters and (clusters[0].spec.get("Orchestration") or {}).get("Rebalance"))


def _pinned(service: Service) -> bool:
    placement = (service.spec.get("TaskTemplate") or {}).get("Placement") or {}
    return bool(placement.get("Constraints") or placement.get("Preferences") or placement.get("MaxReplicas"))


class RebalanceSupervisor:
    def __init__(self) -> None:
        self.moves: dict[str, Move] = {}        # service ID -> the move in flight
        self.not_before: dict[str, float] = {}  # service ID -> when the next move may start
        self.done: dict[str, str] = {}          # service ID -> the last request found balanced
        self.moved = 0                          # moves completed (diagnostics, tests)

    def forget(self, service_id: str) -> None:
        self.moves.pop(service_id, None)
        self.not_before.pop(service_id, None)
        self.done.pop(service_id, None)

    def step(self, tx: WriteTx, service: Service, now: float) -> float | None:
        move = self.moves.get(service.id)
        if move is not None:
            return self._follow(tx, service, move, now)
        request = str((service.spec.get("Labels") or {}).get(REQUEST_LABEL) or "")
        if not swarm_wide(tx) and (not request or self.done.get(service.id) == request):
            return None
        if service.mode != "replicated" or _pinned(service) or service.update_state in _ROLLING:
            return None
        when = self.not_before.get(service.id, 0.0)
        if now < when:
            return when
        tasks = [t for t in tx.find("tasks", service_id=service.id) if runnable(t)]
        if any(t.status.state != _RUNNING or t.desired_state != _RUNNING or is_task_dirty(service, t) for t in tasks):
            return None     # not settled: the orchestrator, updater or scheduler is still at work
        if len(tasks) > service.replicas:
            self._finish_interrupted(tx, tasks)
            return None
        eligible = [n.id for n in tx.all("nodes") if n.state is NodeState.READY and n.availability == "active"]
        load = Counter({node_id: 0 for node_id in eligible})
        for task in tasks:
            if task.node_id in load:
                load[task.node_id] += 1
        if len(load) < 2:
            return None
        busiest, most = max(load.items(), key=lambda kv: (kv[1], kv[0]))
        least = min(load.values())
        if most - least <= 1:
            if request:
                self.done[service.id] = request
            return None
        old = max((t for t in tasks if t.node_id == busiest), key=lambda t: (t.slot, t.id))
        replacement = new_task(service, now, slot=old.slot)
        tx.create(replacement)
        self.moves[service.id] = Move(replacement.id, old.id)
        return None

    def _finish_interrupted(self, tx: WriteTx, tasks: list[Task]) -> None:
        """Slots holding two running tasks: a move a former leader started and did not finish.
        Finish it: the older task of each such slot is shut down."""
        for slot_tasks in group_by_slot(tasks).values():
            for older in sorted(slot_tasks, key=lambda t: (t.created_at, t.id))[:-1]:
                stopped = older.copy()
                stopped.set_desired_state(_SHUTDOWN)
                tx.update(stopped)

    def _follow(self, tx: WriteTx, service: Service, move: Move, now: float) -> float | None:
        new: Task | None = tx.get("tasks", move.new_task_id)
        if new is not None and new.desired_state <= _RUNNING and new.status.state < _RUNNING:
            return None     # still on its way: its events bring us back
        del self.moves[service.id]
        if new is not None and new.status.state == _RUNNING and new.desired_state == _RUNNING:
            old: Task | None = tx.get("tasks", move.old_task_id)
            if old is not None and runnable(old):
                stopped = old.copy()
                stopped.set_desired_state(_SHUTDOWN)
                tx.update(stopped)
            self.moved += 1
        when = now + update_config(service.spec).delay
        self.not_before[service.id] = when
        return when

