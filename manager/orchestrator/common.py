"""Shared rules of the orchestrators: making tasks, dirtiness, slots, node health, and the
service spec changes the API makes (update and rollback).

A "slot" is where one replica lives: (service, slot number) for replicated services,
(service, node) for global ones. A task is *runnable* while its desired state is at most
running; a slot is occupied while it holds a runnable task.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from manager.allocator import PENDING_MESSAGE, needs_addresses, needs_ingress
from manager.scheduler.nodeinfo import task_host_ports
from manager.specs import SpecError
from manager.store import ReadTx
from model import Node, NodeState, Service, Task, TaskState, TaskStatus, UpdateState, format_time, new_id

# Task states bound once: reading a member off the Enum class costs ~70 ns, and these
# comparisons run for every task of every write.
_ASSIGNED, _COMPLETE, _NEW, _PENDING, _READY, _RUNNING = (
    TaskState.ASSIGNED, TaskState.COMPLETE, TaskState.NEW, TaskState.PENDING, TaskState.READY, TaskState.RUNNING)

_DOWN = NodeState.DOWN

SlotKey = tuple[str, int | str]


def slot_key(task: Task) -> SlotKey:
    return (task.service_id, task.slot if task.slot else task.node_id)


def new_task(service: Service, now: float, slot: int = 0, node_id: str = "",
             desired: TaskState = TaskState.RUNNING) -> Task:
    """A fresh task from the service's current TaskTemplate: NEW when the allocator must give it
    addresses first, else straight PENDING for the scheduler (Docker writes every task twice)."""
    status = TaskStatus(_NEW, format_time(now), "created") if needs_addresses(service) else \
        TaskStatus(_PENDING, format_time(now), PENDING_MESSAGE)
    return Task(id=new_id(), spec=service.spec.get("TaskTemplate") or {}, service_id=service.id, slot=slot,
                node_id=node_id, desired_state=desired, service_name=service.name, status=status,
                labels=dict(service.spec.get("Labels") or {}))


EndpointNeeds = tuple[bool, frozenset[tuple[str, int]]]


def endpoint_needs(service: Service) -> EndpointNeeds:
    """What the service's EndpointSpec asks of each task itself: an address on ingress (an
    ingress-mode published port) and its host-mode ports (protocol, published port)."""
    ports = [p for p in (service.spec.get("EndpointSpec") or {}).get("Ports") or () if isinstance(p, dict)]
    host = frozenset((str(p.get("Protocol") or "tcp").lower(), int(p.get("PublishedPort") or 0)) for p in ports
                     if str(p.get("PublishMode") or "").lower() == "host" and p.get("PublishedPort"))
    return needs_ingress(service), host


def endpoint_dirty(needs: EndpointNeeds, task: Task) -> bool:
    """A task that no longer matches its service's endpoint (swarmkit compares Endpoint.Spec):
    published ports added to a service that had none need tasks on ingress, and host-mode ports
    are bound where the task was placed. Only judged once the allocator (ingress) or the
    scheduler (host ports) has had its say on the task; what they have not done yet they do
    with the current spec."""
    if task.status.state < _PENDING:
        return False
    on_ingress = any(isinstance(a, dict) and bool(((a.get("Network") or {}).get("Spec") or {}).get("Ingress"))
                     for a in task.networks_attachments)
    if on_ingress != needs[0]:
        return True
    return bool(task.node_id) and frozenset(task_host_ports(task)) != needs[1]


def is_task_dirty(service: Service, task: Task) -> bool:
    """True when the task was made from another spec than the service's current TaskTemplate
    (which includes ForceUpdate), or no longer matches its endpoint (`endpoint_dirty`). The
    API's `_up-to-date` filter is `not is_task_dirty`."""
    return task.spec != (service.spec.get("TaskTemplate") or {}) or endpoint_dirty(endpoint_needs(service), task)


def earliest(a: float | None, b: float | None) -> float | None:
    """The sooner of two wake-up times (None: no wake-up)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def runnable(task: Task) -> bool:
    return task.desired_state <= _RUNNING


def node_is_down(node: Node | None) -> bool:
    """Gone from the store, or marked down by the dispatcher."""
    return node is None or node.state is _DOWN


def task_stopped(task: Task, tx: ReadTx) -> bool:
    """The task is not (and will not be) running anywhere."""
    if task.status.state > _RUNNING:
        return True
    if not task.node_id or task.status.state < _ASSIGNED:
        return True
    return node_is_down(tx.get("nodes", task.node_id))


def group_by_slot(tasks: Iterable[Task]) -> dict[SlotKey, list[Task]]:
    slots: dict[SlotKey, list[Task]] = {}
    for task in tasks:
        slots.setdefault(slot_key(task), []).append(task)
    return slots


def ready_slots(tasks: list[Task]) -> list[list[Task]]:
    """The tasks of each slot holding a task with desired state READY (a delayed restart or a
    start-first replacement waiting to be started): the only slots READY promotion acts on."""
    waiting = {slot_key(t) for t in tasks if t.desired_state == _READY}
    if not waiting:
        return []
    return [slot_tasks for key, slot_tasks in group_by_slot(tasks).items() if key in waiting]


def history_limit(tx: ReadTx, default: int = 5) -> int:
    clusters = tx.all("clusters")
    if not clusters:
        return default
    orch = clusters[0].spec.get("Orchestration") or {}
    value = orch.get("TaskHistoryRetentionLimit")
    return default if value is None else int(value)


def update_service_spec(service: Service, new_spec: dict[str, Any], now: float) -> Service:
    """A copy of `service` with `new_spec` (already validated and normalised): the old spec
    becomes PreviousSpec and UpdateStatus is cleared so the updater starts afresh."""
    updated = service.copy()
    updated.previous_spec = copy.deepcopy(service.spec)
    updated.spec = copy.deepcopy(new_spec)
    updated.clear_update_status()
    return updated


def rollback_service(service: Service, now: float) -> Service:
    """`service update --rollback`: swap in PreviousSpec and mark the rollback started."""
    if service.previous_spec is None:
        raise SpecError(f"service {service.id} does not have a previous spec")
    rolled = service.copy()
    rolled.spec, rolled.previous_spec = copy.deepcopy(service.previous_spec), copy.deepcopy(service.spec)
    rolled.set_update_status(UpdateState.ROLLBACK_STARTED, "manually requested rollback",
                             started_at=format_time(now))  # legal from every state
    return rolled
