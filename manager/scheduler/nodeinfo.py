"""What the scheduler knows about one node: the node, its live tasks, its free resources.

Invariant: `tasks` holds exactly the tasks assigned to this node that have not finished
(observed state <= running); their reservations are subtracted from the node's resources,
`service_counts` counts those of them still desired running, per service, and `host_ports`
counts the host-mode published ports they hold (Task.endpoint), per (protocol, port).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model import Node, Task, TaskState

# Task states bound once: reading a member off the Enum class costs ~70 ns, and these
# comparisons run for every task of every write.
_ASSIGNED, _COMPLETE, _RUNNING = TaskState.ASSIGNED, TaskState.COMPLETE, TaskState.RUNNING


def reservations(task: Task) -> tuple[int, int]:
    """(NanoCPUs, MemoryBytes) the task reserves."""
    res = ((task.spec.get("Resources") or {}).get("Reservations")) or {}
    return int(res.get("NanoCPUs") or 0), int(res.get("MemoryBytes") or 0)


def task_host_ports(task: Task) -> tuple[tuple[str, int], ...]:
    """(protocol, port) of each host-mode port the task publishes on its node (Task.endpoint)."""
    endpoint = task.endpoint
    if not endpoint:
        return ()
    return tuple((str(p.get("Protocol") or "tcp").lower(), int(p.get("PublishedPort") or 0))
                 for p in endpoint.get("Ports") or ()
                 if str(p.get("PublishMode") or "").lower() == "host" and p.get("PublishedPort"))


def holds_resources(task: Task) -> bool:
    return bool(task.node_id) and _ASSIGNED <= task.status.state <= _RUNNING


@dataclass
class NodeInfo:
    node: Node
    tasks: dict[str, Task] = field(default_factory=dict)
    service_counts: dict[str, int] = field(default_factory=dict)
    active_count: int = 0
    reserved_cpu: int = 0
    reserved_memory: int = 0
    host_ports: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.node.id

    @property
    def total_cpu(self) -> int:
        return int((self.node.description.get("Resources") or {}).get("NanoCPUs") or 0)

    @property
    def total_memory(self) -> int:
        return int((self.node.description.get("Resources") or {}).get("MemoryBytes") or 0)

    @property
    def free_cpu(self) -> int:
        return self.total_cpu - self.reserved_cpu

    @property
    def free_memory(self) -> int:
        return self.total_memory - self.reserved_memory

    def add_task(self, task: Task, reserved: tuple[int, int] | None = None) -> bool:
        """Count `task` here (replacing an older copy). False if it was already counted as is.
        `reserved`: the task's `reservations`, when the caller already knows them."""
        old = self.tasks.get(task.id)
        if old is not None:
            if old.desired_state == task.desired_state:
                self.tasks[task.id] = task
                return False
            self.remove_task(task.id)
        self.tasks[task.id] = task
        cpu, memory = reserved if reserved is not None else reservations(task)
        self.reserved_cpu += cpu
        self.reserved_memory += memory
        if task.endpoint:
            for key in task_host_ports(task):
                self.host_ports[key] = self.host_ports.get(key, 0) + 1
        if task.desired_state <= _COMPLETE:     # running, or a job's task running to completion
            self.service_counts[task.service_id] = self.service_counts.get(task.service_id, 0) + 1
            self.active_count += 1
        return True

    def remove_task(self, task_id: str) -> bool:
        task = self.tasks.pop(task_id, None)
        if task is None:
            return False
        cpu, memory = reservations(task)
        self.reserved_cpu -= cpu
        self.reserved_memory -= memory
        if task.endpoint:
            for key in task_host_ports(task):
                left = self.host_ports.get(key, 0) - 1
                if left > 0:
                    self.host_ports[key] = left
                else:
                    self.host_ports.pop(key, None)
        if task.desired_state <= _COMPLETE:     # running, or a job's task running to completion
            left = self.service_counts[task.service_id] - 1
            if left:
                self.service_counts[task.service_id] = left
            else:
                del self.service_counts[task.service_id]
            self.active_count -= 1
        return True
