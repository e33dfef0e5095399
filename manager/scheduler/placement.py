"""Placing a group of identical tasks (same service, same spec) onto the eligible nodes.

Theory of operation: the nodes that pass the static filters are arranged in a tree, one
level per placement preference (`node.labels.zone` ...), each branch keyed by the node's
value for it. Each task descends the tree taking, at every level, the branch with the
fewest tasks of this service so far, and at the leaf takes the node with the fewest tasks of
this service, then the fewest tasks in all, from a heap. A node that fails a dynamic filter
(resources, replicas per node) leaves the heap; an empty leaf leaves its parent. Each
placement costs O(depth * log nodes): no rescans and no sorting per task.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from manager.scheduler.filters import Pipeline
from manager.scheduler.nodeinfo import NodeInfo, reservations
from manager.specs import node_value
from model import Task


class Branch:
    def __init__(self, service_id: str, descriptors: list[str], level: int = 0) -> None:
        self.service_id = service_id
        self.descriptors = descriptors
        self.level = level
        self.count = 0  # tasks of the service in this branch
        self.children: dict[str, Branch] = {}
        self.heap: list[tuple[int, int, str]] = []
        self.infos: dict[str, NodeInfo] = {}
        self.is_leaf = level == len(descriptors)

    def add(self, info: NodeInfo) -> None:
        self.count += info.service_counts.get(self.service_id, 0)
        if self.is_leaf:
            self.infos[info.id] = info
            heapq.heappush(self.heap, self._key(info))
            return
        value = node_value(info.node, self.descriptors[self.level]) or ""
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = Branch(self.service_id, self.descriptors, self.level + 1)
        child.add(info)

    def _key(self, info: NodeInfo) -> tuple[int, int, str]:
        return (info.service_counts.get(self.service_id, 0), info.active_count, info.id)

    def empty(self) -> bool:
        return not self.heap if self.is_leaf else not self.children

    def place(self, pipeline: Pipeline) -> NodeInfo | None:
        """Pick a node for one task (the caller then adds the task to it); None: nothing fits."""
        if self.is_leaf:
            heap = self.heap
            while heap:
                info = self.infos[heap[0][2]]
                if not pipeline.dynamic or pipeline.check_dynamic(info):
                    return info
                heapq.heappop(heap)
            return None
        while self.children:
            value, child = min(self.children.items(), key=lambda kv: (kv[1].count, kv[0]))
            found = child.place(pipeline)
            if found is not None:
                return found
            del self.children[value]
        return None

    def placed(self, info: NodeInfo) -> None:
        """Record that a task of the service went to `info` (already updated)."""
        self.count += 1
        if self.is_leaf:
            heapq.heapreplace(self.heap, self._key(info))
            return
        value = node_value(info.node, self.descriptors[self.level]) or ""
        self.children[value].placed(info)


SPREAD_PREFIXES = ("node.labels.", "engine.labels.")


def spread_descriptors(task: Task) -> list[str]:
    """The task's spread preferences the scheduler can read, in order: `node.labels.<name>` and
    `engine.labels.<name>` (the prefix in any case, as swarmkit reads it). Any other descriptor
    (Docker accepts any text, e.g. docker-py's `com.dockerpy.test`) is skipped, as swarmkit's
    scheduler skips it."""
    prefs = (task.spec.get("Placement") or {}).get("Preferences") or []
    out = []
    for pref in prefs:
        desc = str((pref.get("Spread") or {}).get("SpreadDescriptor") or "")
        for prefix in SPREAD_PREFIXES:
            if len(desc) > len(prefix) and desc[:len(prefix)].lower() == prefix:
                out.append(prefix + desc[len(prefix):])
    return out


def place_group(tasks: list[Task], infos: Iterable[NodeInfo],
                pipeline: Pipeline) -> tuple[list[tuple[Task, NodeInfo]], str]:
    """Place identical tasks. Returns (task, node) pairs (nodes already hold the tasks) and,
    if some could not be placed, the explanation for them."""
    first = tasks[0]
    pipeline.set_task(first)
    root = Branch(first.service_id, spread_descriptors(first))
    for info in infos:
        if pipeline.check(info):
            root.add(info)
    placed: list[tuple[Task, NodeInfo]] = []
    reserved = reservations(first)  # identical tasks reserve alike
    for task in tasks:
        chosen = root.place(pipeline)
        if chosen is None:
            break
        chosen.add_task(task, reserved)
        root.placed(chosen)
        placed.append((task, chosen))
    explanation = pipeline.explain() if len(placed) < len(tasks) else ""
    return placed, explanation


def place_on_node(task: Task, info: NodeInfo | None, pipeline: Pipeline) -> str:
    """A task already bound to a node (global services): "" if it fits there, else why not."""
    pipeline.set_task(task)
    if info is None:
        return "no suitable node (the task's node is not part of the swarm)"
    if pipeline.check(info):
        info.add_task(task)
        return ""
    return pipeline.explain()
