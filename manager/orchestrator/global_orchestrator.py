"""The global orchestrator: one task of every global service on each eligible node.

A node is eligible when it is not down, its availability is active, and it satisfies the
service's placement constraints. Per service, in one transaction: eligible nodes without a
runnable task get one (bound to the node, slot 0); a paused node keeps what it has but gets
nothing new; drained, down, removed or no-longer-matching nodes have their tasks shut down;
finished tasks go to the restart supervisor (replacement on the same node); the updater and
READY promotion run as for replicated services.
"""

from __future__ import annotations

from manager.orchestrator.clock import Clock
from manager.orchestrator.common import earliest, new_task, node_is_down, ready_slots, runnable
from manager.orchestrator.loop import ReconcileLoop
from manager.orchestrator.restart import RestartSupervisor
from manager.orchestrator.updater import UpdateSupervisor
from manager.specs import SpecError, placement_constraints
from manager.store import Store, WriteTx
from model import Node, Service, Task, TaskState


def node_fits(service: Service, node: Node) -> bool:
    try:
        constraints = placement_constraints(service.spec.get("TaskTemplate") or {})
    except SpecError:
        return False
    return all(c.matches(node) for c in constraints)


class GlobalOrchestrator(ReconcileLoop):
    def __init__(self, store: Store, clock: Clock | None = None, restarts: RestartSupervisor | None = None,
                 updates: UpdateSupervisor | None = None) -> None:
        super().__init__(store, clock)
        self.restarts = restarts or RestartSupervisor()
        self.updates = updates or UpdateSupervisor()

    def reconcile_service(self, tx: WriteTx, service_id: str, now: float) -> float | None:
        service = tx.get("services", service_id)
        if service is None:
            self.updates.forget(service_id)
            return None
        if service.mode != "global":
            return None
        by_node: dict[str, list[Task]] = {}
        for task in tx.find("tasks", service_id=service_id):
            if runnable(task):
                by_node.setdefault(task.node_id, []).append(task)
        nodes = {n.id: n for n in tx.all("nodes")}
        wake: float | None = None
        for node_id, tasks in by_node.items():
            node = nodes.get(node_id)
            if node is None or node_is_down(node) or node.availability == "drain" \
                    or not node_fits(service, node):
                for task in tasks:
                    gone = task.copy()
                    gone.set_desired_state(TaskState.SHUTDOWN)
                    tx.update(gone)
                continue
            for task in tasks:
                if task.status.state > TaskState.RUNNING:
                    wake = earliest(wake, self.restarts.restart(tx, service, task, now))
        for node in nodes.values():
            if node.id in by_node or node_is_down(node) or node.availability != "active":
                continue
            if node_fits(service, node):
                tx.create(new_task(service, now, node_id=node.id))

        wake = earliest(wake, self.updates.step(tx, service, now))
        for slot_tasks in ready_slots(tx.find("tasks", service_id=service_id)):
            wake = earliest(wake, self.restarts.promote_ready(tx, slot_tasks, now))
        return wake
