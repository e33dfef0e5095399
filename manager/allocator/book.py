"""The address book: which addresses are in use on each network, and which networks each node's
live tasks use. It is derived from the store, never a source of truth: `load` rebuilds it from
a snapshot (a new term, a dropped watch) and every store event replaces what the changed object
contributes.

Who holds an address:
- a task, while it may still run: its observed state is at most RUNNING, and it is not a task
  that never reached a node and never will (state before ASSIGNED with desired state SHUTDOWN or
  later: the scheduler no longer places it and nothing runs it). Desired state alone never
  frees an address: an assigned task keeps its addresses until it is observed past RUNNING
  (so an address is held while the old container stops) or deleted;
- a node, for its own endpoint on each network in `Node.attachments`;
- a service, for each virtual IP in `Endpoint.VirtualIPs`.

A node needs an endpoint on ingress and on every network one of its live tasks is attached to.
"""

from __future__ import annotations

from collections.abc import Iterable

from manager.allocator.ipam import parse_cidr_address
from model import Node, Service, Task, TaskState

_ASSIGNED, _RUNNING, _SHUTDOWN = TaskState.ASSIGNED, TaskState.RUNNING, TaskState.SHUTDOWN

Holds = tuple[tuple[str, int], ...]  # ((network ID, address as int), ...)


def task_holds_addresses(task: Task) -> bool:
    state = task.status.state
    if state > _RUNNING:
        return False
    return not (state < _ASSIGNED and task.desired_state >= _SHUTDOWN)


def attachment_holds(attachments: Iterable[dict]) -> Holds:
    out = []
    for attachment in attachments:
        network_id = str(((attachment or {}).get("Network") or {}).get("ID") or "")
        for text in attachment.get("Addresses") or []:
            parsed = parse_cidr_address(str(text))
            if network_id and parsed is not None:
                out.append((network_id, parsed[0]))
    return tuple(out)


def attachment_networks(attachments: Iterable[dict]) -> list[str]:
    out = []
    for attachment in attachments:
        network_id = str(((attachment or {}).get("Network") or {}).get("ID") or "")
        if network_id and network_id not in out:
            out.append(network_id)
    return out


class AddressBook:
    def __init__(self) -> None:
        self.used: dict[str, dict[int, int]] = {}  # network ID -> address -> number of holders
        self._holds: dict[tuple[str, str], Holds] = {}  # (table, object ID) -> what it holds
        self._task_usage: dict[str, tuple[str, tuple[str, ...]]] = {}  # task ID -> (node ID, networks)
        self.node_networks: dict[str, dict[str, int]] = {}  # node ID -> network ID -> live tasks on it

    def load(self, tasks: Iterable[Task], nodes: Iterable[Node], services: Iterable[Service]) -> None:
        self.used, self._holds, self._task_usage, self.node_networks = {}, {}, {}, {}
        for task in tasks:
            self.task(task.id, task)
        for node in nodes:
            self.node(node.id, node)
        for service in services:
            self.service(service.id, service)

    def tracks_task(self, task_id: str) -> bool:
        """The task holds addresses or counts towards a node's networks (as last recorded)."""
        return ("tasks", task_id) in self._holds or task_id in self._task_usage

    def used_on(self, network_id: str) -> dict[int, int]:
        return self.used.get(network_id) or {}

    # -- per object: returns the networks on which an address was freed -------------------------
    def _set(self, key: tuple[str, str], holds: Holds) -> set[str]:
        old = self._holds.get(key, ())
        if old == holds:
            return set()
        freed: set[str] = set()
        for network_id, address in old:
            on = self.used.get(network_id)
            if on is None or address not in on:
                continue
            on[address] -= 1
            if on[address] <= 0:
                del on[address]
                freed.add(network_id)
                if not on:
                    del self.used[network_id]
        for network_id, address in holds:
            on = self.used.setdefault(network_id, {})
            on[address] = on.get(address, 0) + 1
        if holds:
            self._holds[key] = holds
        else:
            self._holds.pop(key, None)
        return freed

    def task(self, task_id: str, task: Task | None) -> tuple[set[str], set[str]]:
        """Record a task as it now is (None: deleted). Returns (networks with a freed address,
        nodes whose set of needed networks changed)."""
        live = task is not None and task_holds_addresses(task)
        attachments = task.networks_attachments if task is not None and live else []
        freed = self._set(("tasks", task_id), attachment_holds(attachments) if attachments else ())
        changed: set[str] = set()
        usage = (task.node_id, tuple(attachment_networks(attachments))) \
            if task is not None and live and task.node_id and attachments else None
        old = self._task_usage.get(task_id)
        if old == usage:
            return freed, changed
        if old is not None:
            counts = self.node_networks.get(old[0], {})
            for network_id in old[1]:
                counts[network_id] = counts.get(network_id, 0) - 1
                if counts[network_id] <= 0:
                    counts.pop(network_id, None)
                    changed.add(old[0])
            if not counts:
                self.node_networks.pop(old[0], None)
            del self._task_usage[task_id]
        if usage is not None:
            counts = self.node_networks.setdefault(usage[0], {})
            for network_id in usage[1]:
                if not counts.get(network_id):
                    changed.add(usage[0])
                counts[network_id] = counts.get(network_id, 0) + 1
            self._task_usage[task_id] = usage
        return freed, changed

    def node(self, node_id: str, node: Node | None) -> set[str]:
        return self._set(("nodes", node_id), attachment_holds(node.attachments) if node is not None else ())

    def service(self, service_id: str, service: Service | None) -> set[str]:
        holds: list[tuple[str, int]] = []
        for vip in ((service.endpoint or {}).get("VirtualIPs") or []) if service is not None else []:
            parsed = parse_cidr_address(str(vip.get("Addr") or ""))
            if vip.get("NetworkID") and parsed is not None:
                holds.append((str(vip["NetworkID"]), parsed[0]))
        return self._set(("services", service_id), tuple(holds))
