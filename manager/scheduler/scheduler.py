"""The scheduler: binds pending tasks to nodes (PENDING -> ASSIGNED), leader only.

Theory of operation (level-triggered): it keeps, from one `view_and_watch`, a NodeInfo per
node and the set of unassigned tasks. Events only update those. Every `tick()` tries every
unassigned task again, grouped by service and spec, so a task left pending (with the reason
in Status.Err) is placed as soon as any node, label or freed reservation lets it fit. Writes
re-read the task and give way if it changed meanwhile; a failed write is simply retried on a
later tick. A dropped watch rebuilds everything from a fresh snapshot.

Host-mode published ports: it also keeps, per service that has some, the host-mode ports of its
EndpointSpec. A task is placed with them (its `endpoint`, written with the assignment, so the
node's count of used host ports and the worker's PortStatus both come from the task itself), and
the write gives way if the service's host ports changed since.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from manager.allocator.ports import host_ports, spec_ports
from manager.scheduler.filters import Pipeline
from manager.scheduler.nodeinfo import NodeInfo, holds_resources
from manager.scheduler.placement import place_group, place_on_node
from manager.store import Event, ReadTx, Store, WatchDropped, WriteTx
from model import Service, Task, TaskState, format_time

# Task states bound once: reading a member off the Enum class costs ~70 ns, and these
# comparisons run for every task of every write.
_ASSIGNED, _COMPLETE, _NEW, _PENDING, _RUNNING = (
    TaskState.ASSIGNED, TaskState.COMPLETE, TaskState.NEW, TaskState.PENDING, TaskState.RUNNING)

PENDING_MESSAGE = "pending task scheduling"
ASSIGNED_MESSAGE = "scheduler assigned task to node"


def host_endpoint(service: Service | None) -> dict | None:
    """What a task of `service` is placed with: {"Ports": [its host-mode ports]}, or None."""
    if service is None or not (service.spec.get("EndpointSpec") or {}).get("Ports"):
        return None
    ports = host_ports(spec_ports(service.spec))
    return {"Ports": ports} if ports else None


@dataclass
class Decision:
    task: Task
    node_id: str = ""  # "" = stays pending
    err: str = ""


class Scheduler:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time, accept_new: bool = False,
                 on_assigned: Callable[[Task], None] | None = None) -> None:
        """accept_new: also place NEW tasks (when no allocator moves them to PENDING).
        on_assigned: told each task once its assignment is written (metrics)."""
        self.store = store
        self.on_assigned = on_assigned
        self.clock = clock
        self.accept_new = accept_new
        self.nodes: dict[str, NodeInfo] = {}
        self.unassigned: dict[str, Task] = {}
        self.host_endpoints: dict[str, dict] = {}  # service ID -> its tasks' endpoint (host-mode ports)
        self.pipeline = Pipeline()
        self.ticks = 0

    # -- state from the store ------------------------------------------------------------
    def load(self, tx: ReadTx) -> None:
        self.nodes = {n.id: NodeInfo(n) for n in tx.all("nodes")}
        self.host_endpoints = {}
        for service in tx.all("services"):
            self._service(service.id, service)
        self.unassigned = {}
        for task in tx.all("tasks"):
            self._track(task)

    def _schedulable(self, task: Task) -> bool:
        wanted = task.status.state == _PENDING or (
            self.accept_new and task.status.state == _NEW)
        return wanted and task.desired_state <= _COMPLETE     # a job's tasks run to COMPLETE

    def _track(self, task: Task) -> None:
        if self._schedulable(task):
            self.unassigned[task.id] = task
        else:
            self.unassigned.pop(task.id, None)
        if holds_resources(task):
            info = self.nodes.get(task.node_id)
            if info is not None:
                info.add_task(task)

    def handle(self, event: Event) -> None:
        obj = event.obj
        if event.table == "nodes":
            if event.op == "delete":
                self.nodes.pop(obj.id, None)
            elif obj.id in self.nodes:
                self.nodes[obj.id].node = obj
            else:
                self.nodes[obj.id] = NodeInfo(obj)
        elif event.table == "tasks":
            self._task_event(event.op, obj, event.old)
        elif event.table == "services":
            self._service(obj.id, None if event.op == "delete" else obj)

    def _service(self, service_id: str, service: Service | None) -> None:
        endpoint = host_endpoint(service)
        if endpoint is None:
            self.host_endpoints.pop(service_id, None)
        else:
            self.host_endpoints[service_id] = endpoint

    def _task_event(self, op: str, task: Task, old: Task | None) -> None:
        state = task.status.state
        holds = bool(task.node_id) and _ASSIGNED <= state <= _RUNNING  # holds_resources
        if holds and op == "update" and old is not None \
                and (old.node_id == "" or (old.node_id == task.node_id and holds_resources(old))):
            # This scheduler's own placement coming back, or a worker's progress on a placed
            # task: the node already counts it as it is.
            info = self.nodes.get(task.node_id)
            if info is not None:
                counted = info.tasks.get(task.id)
                if counted is not None and counted.desired_state == task.desired_state:
                    info.tasks[task.id] = task
                    self.unassigned.pop(task.id, None)
                    return
        moved = old is not None and old.node_id != task.node_id
        if op == "delete" or not holds or moved:
            info = self.nodes.get(task.node_id)
            if info is not None:
                info.remove_task(task.id)
            if moved:
                info = self.nodes.get(old.node_id)  # type: ignore[union-attr]
                if info is not None:
                    info.remove_task(task.id)
        if op == "delete":
            self.unassigned.pop(task.id, None)
            return
        if (state == _PENDING or (self.accept_new and state == _NEW)) \
                and task.desired_state <= _COMPLETE:  # _schedulable
            self.unassigned[task.id] = task
        else:
            self.unassigned.pop(task.id, None)
        if holds:
            info = self.nodes.get(task.node_id)
            if info is not None:
                info.add_task(task)

    # -- deciding ------------------------------------------------------------------------------
    def decide(self) -> list[Decision]:
        """Place every unassigned task that fits (pure: updates only this object's view)."""
        decisions: list[Decision] = []
        if self.host_endpoints:
            self._give_host_ports()
        # Per service, its groups of tasks with equal specs (usually one, two during an update):
        # a spec is compared by identity first (tasks of one write share it), then by value.
        by_service: dict[str, list[tuple[dict, list[Task]]]] = {}
        for task in self.unassigned.values():
            if task.node_id:
                err = place_on_node(task, self.nodes.get(task.node_id), self.pipeline)
                decisions.append(Decision(task, "" if err else task.node_id, err))
                continue
            spec = task.spec
            groups = by_service.setdefault(task.service_id, [])
            for group_spec, members in groups:
                if group_spec is spec or group_spec == spec:
                    members.append(task)
                    break
            else:
                groups.append((spec, [task]))
        infos = list(self.nodes.values())
        for group in (members for groups in by_service.values() for _, members in groups):
            group.sort(key=lambda t: (t.slot, t.id))
            placed, err = place_group(group, infos, self.pipeline)
            decisions.extend(Decision(task, info.id) for task, info in placed)
            decisions.extend(Decision(task, "", err) for task in group[len(placed):])
        return decisions

    def _give_host_ports(self) -> None:
        """Unassigned tasks carry their service's host-mode ports (private copies, placed as such)."""
        for task_id, task in list(self.unassigned.items()):
            wanted = self.host_endpoints.get(task.service_id)
            if task.endpoint != wanted:
                twin = task.copy()
                twin.endpoint = wanted
                self.unassigned[task_id] = twin

    async def tick(self) -> int:
        """One scheduling round; returns how many tasks were assigned."""
        self.ticks += 1
        decisions = self.decide()
        now = format_time(self.clock())
        writes = [d for d in decisions if d.node_id or
                  (d.err != d.task.status.err or d.task.status.state != _PENDING)]
        if not writes:
            return 0

        def queue(batch) -> None:
            for decision in writes:
                batch.update(lambda tx, d=decision: self._write(tx, d, now))

        result = await self.store.batch(queue)
        assigned = 0
        for decision, error in zip(writes, result.errors, strict=True):
            if error is not None:
                self._undo(decision)
            elif decision.node_id:
                assigned += 1
                self.unassigned.pop(decision.task.id, None)
                if self.on_assigned is not None:
                    self.on_assigned(decision.task)
        return assigned

    def _write(self, tx: WriteTx, decision: Decision, now: str) -> None:
        current = tx.get("tasks", decision.task.id)
        if current is None or current.version != decision.task.version or not self._schedulable(current):
            raise LookupError("task changed since it was scheduled")
        task = current.copy()
        if decision.node_id:
            if host_endpoint(tx.get("services", current.service_id)) != decision.task.endpoint:
                raise LookupError("the service's host-mode ports changed since the task was placed")
            task.endpoint = decision.task.endpoint
            task.node_id = decision.node_id
            task.status.advance(_ASSIGNED, now, ASSIGNED_MESSAGE)
        else:
            task.status.advance(_PENDING, now, PENDING_MESSAGE, err=decision.err)
        tx.update(task)

    def _undo(self, decision: Decision) -> None:
        info = self.nodes.get(decision.node_id)
        if info is not None and decision.node_id:
            info.remove_task(decision.task.id)

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Leader-only loop; cancel it when leadership ends."""
        while True:
            _, sub = self.store.view_and_watch(self.load, tables=("nodes", "tasks", "services"))
            try:
                await self.tick()
                while True:
                    await sub.wait()
                    for event in sub.drain():
                        self.handle(event)
                    await self.tick()
            except WatchDropped:
                continue
            finally:
                sub.close()

