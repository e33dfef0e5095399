"""Scheduler filters: small objects that say whether a node can take a task.

Each filter: `set_task(task) -> bool` (does it apply to this task at all), `check(info) ->
bool`, and `explain(n) -> str` (why n nodes failed it). `dynamic` filters depend on what is
already placed on the node (resources, replicas per node) and are re-checked as tasks are
placed; the others are decided once per group of identical tasks.
"""

from __future__ import annotations

from manager.scheduler.nodeinfo import NodeInfo, reservations, task_host_ports
from manager.specs import Constraint, SpecError, placement_constraints
from model import Task

_ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64", "armhf": "arm", "armel": "arm"}


def nodes(n: int) -> str:
    return f"{n} node{'s' if n != 1 else ''}"


class Filter:
    dynamic = False

    def set_task(self, task: Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        raise NotImplementedError

    def explain(self, n: int) -> str:
        raise NotImplementedError


class ReadyFilter(Filter):
    def check(self, info: NodeInfo) -> bool:
        return info.node.state == "ready"

    def explain(self, n: int) -> str:
        return f"{nodes(n)} not available for new tasks"


class AvailabilityFilter(Filter):
    """pause and drain nodes take no new tasks."""

    def check(self, info: NodeInfo) -> bool:
        return info.node.availability == "active"

    def explain(self, n: int) -> str:
        return f"{nodes(n)} not available for new tasks"


class ConstraintFilter(Filter):
    def __init__(self) -> None:
        self.constraints: list[Constraint] = []
        self.invalid = ""

    def set_task(self, task: Task) -> bool:
        try:
            self.constraints = placement_constraints(task.spec)
            self.invalid = ""
        except SpecError as exc:  # validated on create; kept safe for old data
            self.constraints, self.invalid = [], exc.message
            return True
        return bool(self.constraints)

    def check(self, info: NodeInfo) -> bool:
        return not self.invalid and all(c.matches(info.node) for c in self.constraints)

    def explain(self, n: int) -> str:
        if self.invalid:
            return f"{nodes(n)} rejected by an invalid constraint ({self.invalid})"
        return f"{nodes(n)} not matching placement constraints"


class MemoryFilter(Filter):
    dynamic = True

    def set_task(self, task: Task) -> bool:
        self.memory = reservations(task)[1]
        return self.memory > 0

    def check(self, info: NodeInfo) -> bool:
        return info.free_memory >= self.memory

    def explain(self, n: int) -> str:
        return f"{nodes(n)} insufficient memory"


class CPUFilter(Filter):
    dynamic = True

    def set_task(self, task: Task) -> bool:
        self.cpu = reservations(task)[0]
        return self.cpu > 0

    def check(self, info: NodeInfo) -> bool:
        return info.free_cpu >= self.cpu

    def explain(self, n: int) -> str:
        return f"{nodes(n)} insufficient CPU"


class MaxReplicasFilter(Filter):
    dynamic = True

    def set_task(self, task: Task) -> bool:
        self.service_id = task.service_id
        self.limit = int((task.spec.get("Placement") or {}).get("MaxReplicas") or 0)
        return self.limit > 0

    def check(self, info: NodeInfo) -> bool:
        return info.service_counts.get(self.service_id, 0) < self.limit

    def explain(self, n: int) -> str:
        return f"{nodes(n)} at the max replicas per node limit"


class HostPortFilter(Filter):
    """Two tasks publishing one host-mode port (same protocol) never share a node. The ports are
    the task's `endpoint` (the scheduler sets it from the service before placing it)."""

    dynamic = True

    def set_task(self, task: Task) -> bool:
        self.ports = task_host_ports(task)
        return bool(self.ports)

    def check(self, info: NodeInfo) -> bool:
        used = info.host_ports
        return not used or not any(key in used for key in self.ports)

    def explain(self, n: int) -> str:
        return f"host-mode port already in use on {nodes(n)}"


def _norm_arch(arch: str) -> str:
    arch = arch.lower()
    return _ARCH_ALIASES.get(arch, arch)


class PlatformFilter(Filter):
    def set_task(self, task: Task) -> bool:
        self.platforms = [(str(p.get("OS") or "").lower(), _norm_arch(str(p.get("Architecture") or "")))
                          for p in (task.spec.get("Placement") or {}).get("Platforms") or []]
        return bool(self.platforms)

    def check(self, info: NodeInfo) -> bool:
        plat = info.node.description.get("Platform") or {}
        node_os = str(plat.get("OS") or "").lower()
        node_arch = _norm_arch(str(plat.get("Architecture") or ""))
        return any((not os or os == node_os) and (not arch or arch == node_arch) for os, arch in self.platforms)

    def explain(self, n: int) -> str:
        return f"{nodes(n)} unsupported platform"


def default_filters() -> list[Filter]:
    return [ReadyFilter(), AvailabilityFilter(), PlatformFilter(), ConstraintFilter(), CPUFilter(),
            MemoryFilter(), MaxReplicasFilter(), HostPortFilter()]


class Pipeline:
    """Runs the filters that apply to a task; counts, per filter, the nodes each turned away."""

    def __init__(self, filters: list[Filter] | None = None) -> None:
        self.filters = filters if filters is not None else default_filters()
        self.active: list[Filter] = []
        self.dynamic: list[Filter] = []
        self.failures: dict[int, int] = {}

    def set_task(self, task: Task) -> None:
        self.active = [f for f in self.filters if f.set_task(task)]
        self.dynamic = [f for f in self.active if f.dynamic]
        self.failures = {}

    def _run(self, filters: list[Filter], info: NodeInfo) -> bool:
        for flt in filters:
            if not flt.check(info):
                key = self.filters.index(flt)
                self.failures[key] = self.failures.get(key, 0) + 1
                return False
        return True

    def check(self, info: NodeInfo) -> bool:
        return self._run(self.active, info)

    def check_dynamic(self, info: NodeInfo) -> bool:
        return self._run(self.dynamic, info)

    def explain(self) -> str:
        """"no suitable node (1 node not available for new tasks; 2 nodes insufficient memory)"."""
        merged: dict[str, int] = {}
        for key in sorted(self.failures):
            flt = self.filters[key]
            sample = flt.explain(1)
            merged[sample] = merged.get(sample, 0) + self.failures[key]
        parts = []
        for sample, count in merged.items():
            flt = next(self.filters[k] for k in sorted(self.failures) if self.filters[k].explain(1) == sample)
            parts.append(flt.explain(count))
        return f"no suitable node ({'; '.join(parts)})" if parts else "no suitable node"
