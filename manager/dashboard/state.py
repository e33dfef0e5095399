"""The dashboard's view of the swarm: one JSON-ready document made from one store view.

It holds the nodes (the page's columns) with the tasks placed on them, the services with
running/desired replicas and the progress of a rolling update, and the recent events. Events
are not a log kept somewhere: they are read off the state itself, from the newest status
timestamps of tasks and nodes and the update times of services, so every reload shows the same
history and nothing has to be kept in memory between views.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from manager.store import ReadTx
from model import Node, Service, Task, TaskState

RECENT_EVENTS = 30
MAX_TASKS = 2000         # a page with more than this many task boxes helps nobody; the rest are counted
_RUNNING = TaskState.RUNNING


def _shown(task: Task) -> bool:
    """A task the page shows: one that runs or is wanted to, not the history of finished ones."""
    return task.desired_state <= _RUNNING or task.status.state <= _RUNNING


def _node(node: Node, leader_id: str) -> dict[str, Any]:
    return {"id": node.id, "hostname": node.hostname, "role": node.role, "state": node.state.value,
            "availability": node.availability, "leader": node.id == leader_id,
            "addr": str(node.status.get("Addr", ""))}


def _task(task: Task) -> dict[str, Any]:
    return {"id": task.id, "service": task.service_id, "name": f"{task.service_name}.{task.slot or task.node_id[:12]}",
            "slot": task.slot, "node": task.node_id, "state": task.status.state.api,
            "desired": task.desired_state.api, "message": task.status.message, "err": task.status.err,
            "since": task.status.timestamp}


def _service(service: Service, tasks: list[Task], eligible_nodes: int) -> dict[str, Any]:
    template = service.spec.get("TaskTemplate") or {}
    wanted = [t for t in tasks if t.desired_state == _RUNNING]
    running = sum(1 for t in wanted if t.status.state == _RUNNING)
    mode = service.mode
    desired = service.replicas if mode == "replicated" else (eligible_nodes if mode == "global" else len(wanted))
    image = str((template.get("ContainerSpec") or {}).get("Image", "")).split("@", 1)[0]
    out: dict[str, Any] = {"id": service.id, "name": service.name, "mode": mode, "image": image,
                           "running": running, "desired": desired, "update": None}
    if service.update_status is not None:
        updated = sum(1 for t in wanted if t.spec == template)
        out["update"] = {"state": service.update_status.get("State", ""),
                         "message": service.update_status.get("Message", ""),
                         "updated": updated, "total": len(wanted)}
    return out


def _events(nodes: list[Node], services: list[Service], tasks: list[Task],
            service_names: dict[str, str], hostnames: dict[str, str]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for task in tasks:
        if task.status.timestamp:
            where = f" on {hostnames.get(task.node_id, task.node_id[:12])}" if task.node_id else ""
            name = f"{service_names.get(task.service_id, task.service_name)}.{task.slot or ''}".rstrip(".")
            events.append({"time": task.status.timestamp, "kind": "task",
                           "text": f"task {name} {task.status.state.api}{where}",
                           "detail": task.status.err or task.status.message})
    for service in services:
        verb = "created" if service.updated_at == service.created_at else "updated"
        events.append({"time": service.updated_at, "kind": "service", "text": f"service {service.name} {verb}",
                       "detail": ""})
    for node in nodes:
        events.append({"time": node.updated_at, "kind": "node",
                       "text": f"node {node.hostname or node.id[:12]} {node.state.value}",
                       "detail": str(node.status.get("Message", ""))})
    events.sort(key=lambda e: e["time"], reverse=True)
    return events[:RECENT_EVENTS]


def dashboard_state(tx: ReadTx, leader_id: str = "") -> dict[str, Any]:
    """The whole document; `leader_id`: the node ID of the Raft leader, if known."""
    nodes: list[Node] = sorted(tx.all("nodes"), key=lambda n: (n.role != "manager", n.hostname, n.id))
    services: list[Service] = sorted(tx.all("services"), key=lambda s: s.name)
    tasks: list[Task] = tx.all("tasks")
    shown = [t for t in tasks if _shown(t)]
    shown.sort(key=lambda t: (t.service_name, t.slot, t.node_id, t.status.state, t.id))
    by_service: dict[str, list[Task]] = {}
    for task in shown:
        by_service.setdefault(task.service_id, []).append(task)
    eligible = sum(1 for n in nodes if n.availability == "active" and n.state.value == "ready")
    service_names = {s.id: s.name for s in services}
    hostnames = {n.id: n.hostname for n in nodes}
    states = Counter(t.status.state.api for t in shown)
    return {
        "nodes": [_node(n, leader_id) for n in nodes],
        "services": [_service(s, by_service.get(s.id, []), eligible) for s in services],
        "tasks": [_task(t) for t in shown[:MAX_TASKS]],
        "hidden_tasks": max(0, len(shown) - MAX_TASKS),
        "task_states": dict(states),
        "events": _events(nodes, services, tasks, service_names, hostnames),
    }
