"""The replicated orchestrator: keeps slots 1..Replicas of every replicated service filled.

Per service, in one transaction: tasks on a down, removed or drained node are replaced
elsewhere (no restart delay, no attempt counted); finished tasks go to the restart
supervisor (which holds back one that ended within its own restart delay until the delay is
over); missing slots get new tasks (lowest free numbers first); extra slots are removed from
the highest number down (desired REMOVE; the reaper deletes them once stopped); the updater
moves any rolling update on; the rebalancer (rebalance.py) evens out the spread when asked;
READY replacements are started when due.
"""

from __future__ import annotations

from manager.orchestrator.clock import Clock
from manager.orchestrator.common import earliest, group_by_slot, new_task, node_is_down, ready_slots, runnable
from manager.orchestrator.loop import ReconcileLoop
from manager.orchestrator.rebalance import RebalanceSupervisor
from manager.orchestrator.restart import RestartSupervisor
from manager.orchestrator.updater import UpdateSupervisor
from manager.store import Store, WriteTx
from model import TaskState

# Task states bound once: reading a member off the Enum class costs ~70 ns, and these
# comparisons run for every task of every write.
_READY, _REMOVE, _RUNNING = TaskState.READY, TaskState.REMOVE, TaskState.RUNNING

MAX_NEW_TASKS_PER_ROUND = 2000  # bounds one proposal; the rest follow in the next round



class ReplicatedOrchestrator(ReconcileLoop):
    tables = ("services", "tasks", "nodes", "clusters")     # clusters: the swarm's Rebalance switch

    def __init__(self, store: Store, clock: Clock | None = None, restarts: RestartSupervisor | None = None,
                 updates: UpdateSupervisor | None = None) -> None:
        super().__init__(store, clock)
        self.restarts = restarts or RestartSupervisor()
        self.updates = updates or UpdateSupervisor()
        self.rebalances = RebalanceSupervisor()

    def reconcile_service(self, tx: WriteTx, service_id: str, now: float) -> float | None:
        service = tx.get("services", service_id)
        if service is None:
            self.updates.forget(service_id)
            self.rebalances.forget(service_id)
            return None
        if service.mode != "replicated":
            return None
        unusable: dict[str, bool] = {}  # node ID -> down, removed or drained (read once per round)
        wake: float | None = None
        for task in tx.find("tasks", service_id=service_id):
            if not runnable(task) or (task.desired_state == _READY and task.status.state <= _RUNNING \
                    and not task.node_id):
                continue
            if task.node_id:
                bad = unusable.get(task.node_id)
                if bad is None:
                    node = tx.get("nodes", task.node_id)
                    bad = unusable[task.node_id] = node_is_down(node) or node.availability == "drain"
                if bad:
                    self.restarts.restart(tx, service, task, now, moved=True)
                    continue
            if task.status.state > _RUNNING:
                wake = earliest(wake, self.restarts.restart(tx, service, task, now))

        slots = group_by_slot(tx.find("tasks", service_id=service_id))
        occupied = sorted(key[1] for key, ts in slots.items() if any(runnable(t) for t in ts))
        wanted = service.replicas
        if len(occupied) > wanted:
            for number in occupied[wanted:]:
                for task in slots[(service_id, number)]:
                    if runnable(task):
                        removed = task.copy()
                        removed.set_desired_state(_REMOVE)
                        tx.update(removed)
        elif len(occupied) < wanted:
            taken = set(occupied)
            number, created = 0, 0
            while len(taken) < wanted:
                number += 1
                if number in taken:
                    continue
                if created == MAX_NEW_TASKS_PER_ROUND:
                    wake = now
                    break
                tx.create(new_task(service, now, slot=int(number)))
                taken.add(number)
                created += 1

        wake = earliest(wake, self.updates.step(tx, service, now))
        wake = earliest(wake, self.rebalances.step(tx, service, now))
        for slot_tasks in ready_slots(tx.find("tasks", service_id=service_id)):
            wake = earliest(wake, self.restarts.promote_ready(tx, slot_tasks, now))
        return wake
