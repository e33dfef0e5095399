"""Engine API handlers for tasks (`GET /tasks`, `GET /tasks/{id}`) and the service status counts.

Theory of operation: reads only. Filters follow the Engine API: `id` and `name` are prefix
matches, `label` matches the labels of the task's *service* (what `docker stack ps` relies on),
`service` and `node` accept an ID, a name or a unique ID prefix (an unknown one is a 404, as
dockerd answers), `desired-state` is running|shutdown|accepted, and `_up-to-date` keeps only
tasks that still match their service's current spec (the progress display of the docker CLI
polls with it; the rule is the orchestrator's `is_task_dirty`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engineapi.filters import request_filters
from engineapi.http import ApiError, Routes, json_response
from manager.api.cluster import cluster_store
from manager.api.objects_common import any_prefix, api_errors, labels_match, lookup
from manager.orchestrator.common import is_task_dirty
from manager.orchestrator.jobs import JOB_MODES, job_iteration, replicated_job_sizes, task_iteration
from manager.store import ReadTx
from model import Node, Service, Task, TaskState

TASK_FILTERS = {"id", "name", "label", "service", "node", "desired-state", "_up-to-date", "runtime"}
DESIRED_STATE_FILTER = {"running": TaskState.RUNNING, "shutdown": TaskState.SHUTDOWN,
                        "accepted": TaskState.ACCEPTED}


def task_name(tx: ReadTx, task: Task) -> str:
    """`<service>.<slot>` (or `.<node>` for global tasks) `.<task id>`."""
    service_name = task.service_name
    if not service_name:
        service = tx.get("services", task.service_id)
        service_name = service.name if service is not None else ""
    return f"{service_name}.{task.slot or task.node_id}.{task.id}"


def _down_nodes(tx: ReadTx) -> set[str]:
    nodes: list[Node] = tx.all("nodes")
    return {n.id for n in nodes if n.state == "down"}


def service_status(tx: ReadTx, service: Service) -> dict[str, int]:
    """ServiceStatus{RunningTasks, DesiredTasks, CompletedTasks} of `GET /services?status=true`.
    For a job, only the tasks of its current iteration count."""
    down = _down_nodes(tx)
    mode = service.mode
    iteration = job_iteration(service) if mode in JOB_MODES else None
    running = desired_global = completed = 0
    task: Task
    for task in tx.find("tasks", service_id=service.id):
        if task.node_id in down or (iteration is not None and task_iteration(task) != iteration):
            continue
        if task.desired_state not in (TaskState.RUNNING, TaskState.COMPLETE):
            continue
        if task.status.state == TaskState.RUNNING:
            running += 1
        elif task.status.state == TaskState.COMPLETE:
            completed += 1
        if task.desired_state == TaskState.RUNNING or (   # a global job: its unfinished tasks
                task.desired_state == TaskState.COMPLETE and task.status.state <= TaskState.RUNNING):
            desired_global += 1
    if mode == "replicated":
        desired = service.replicas
    elif mode == "replicated-job":
        max_concurrent, total = replicated_job_sizes(service)
        desired = max(0, min(max_concurrent, total - completed))
    else:
        desired = desired_global
    return {"RunningTasks": running, "DesiredTasks": desired, "CompletedTasks": completed}


def _resolve_refs(tx: ReadTx, table: str, refs: list[str] | None) -> set[str] | None:
    if not refs:
        return None
    return {lookup(tx, table, ref).id for ref in refs}


async def list_tasks(request: web.Request) -> web.Response:
    store = cluster_store(request)
    filters = request_filters(request, TASK_FILTERS)
    wanted_states: set[TaskState] = set()
    for state in filters.get("desired-state") or []:
        if state not in DESIRED_STATE_FILTER:
            raise ApiError(400, f"Invalid filter 'desired-state'='{state}': expected running, shutdown "
                                "or accepted")
        wanted_states.add(DESIRED_STATE_FILTER[state])
    up_to_date = bool(filters.get("_up-to-date"))

    def select(tx: ReadTx) -> list[dict[str, Any]]:
        service_ids = _resolve_refs(tx, "services", filters.get("service"))
        node_ids = _resolve_refs(tx, "nodes", filters.get("node"))
        if service_ids is not None:
            candidates: list[Task] = [t for sid in service_ids for t in tx.find("tasks", service_id=sid)]
        else:
            candidates = tx.all("tasks")
        out = []
        for task in sorted(candidates, key=lambda t: (t.created_at, t.id)):
            service: Service | None = tx.get("services", task.service_id)
            if node_ids is not None and task.node_id not in node_ids:
                continue
            if wanted_states and task.desired_state not in wanted_states:
                continue
            if not any_prefix(filters.get("id"), task.id) or \
                    not any_prefix(filters.get("name"), task_name(tx, task)):
                continue
            labels = service.spec.get("Labels") if service is not None else task.labels
            if not labels_match(filters.get("label"), labels):
                continue
            runtime = "attachment" if "NetworkAttachmentSpec" in task.spec else task.spec.get("Runtime") or "container"
            if (runtime not in filters["runtime"]) if filters.get("runtime") else runtime == "attachment":
                continue    # a standalone container's network attachment is listed only when asked for
            if up_to_date and (service is None or is_task_dirty(service, task)):
                continue
            out.append(task.to_api())
        return out

    with api_errors():
        return json_response(store.view(select))


async def inspect_task(request: web.Request) -> web.Response:
    store = cluster_store(request)
    with api_errors():
        task: Task = store.view(lambda tx: lookup(tx, "tasks", request.match_info["ref"]))
    return json_response(task.to_api())


def add_routes(routes: Routes) -> None:
    routes.add("GET", "/tasks", list_tasks)
    routes.add("GET", "/tasks/{ref}", inspect_task)
