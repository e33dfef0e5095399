"""Network attachments of standalone containers: swarmkit's ResourceAllocator AttachNetwork and
DetachNetwork, served by the leader on the cluster port (rpc.py registers them, node-authenticated:
the caller's node ID comes from its certificate).

Theory of operation: a node that runs `docker run --network <attachable overlay>` (or `docker
network connect`) asks for an attachment; the leader writes an *attachment task*: a Task with no
service whose spec is `{"NetworkAttachmentSpec": {"ContainerID": <cid>, "ContainerName": <name>},
"Networks": [{"Target": <network ID>, "Aliases": [...]}]}`, on the caller's node, NEW. From there
it is an ordinary task to the allocator (an address on the network, PENDING) and to the network
index (a peer for the other nodes using the network, a user of the network for its node, which
is then sent the network's view, and, once RUNNING, a DNS entry under the container's name). The
request waits (bounded) for the allocation and then marks the task RUNNING, as the node's agent
would: the caller builds the interface right after the answer. The assignment stream never sends
attachment tasks to the node's agent (they are not work for a task runner), and the reaper leaves
them alone (they have no service). An attachment asked again for the same container and network
(a node re-requesting after a restart) gets the task it has. Detaching deletes the task, which
frees its address.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from manager.store import Store, WatchDropped, WriteTx
from model import Network, Task, TaskState, TaskStatus, format_time, new_id
from rpc.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable

ATTACHMENT_SPEC = "NetworkAttachmentSpec"
ALLOCATION_TIMEOUT = 10.0     # seconds the allocator has to give an attachment its address
ATTACHED_MESSAGE = "attached"


def is_attachment(task: Task) -> bool:
    """Is `task` a standalone container's network attachment? O(1)."""
    return ATTACHMENT_SPEC in task.spec


def attachment_container(task: Task) -> str:
    return str((task.spec.get(ATTACHMENT_SPEC) or {}).get("ContainerID") or "")


def _text(params: dict[str, Any], key: str, required: bool = True) -> str:
    value = params.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidArgument(f"{key} must be a non-empty string")
    return value


def find_network(tx: Any, ref: str) -> Network | None:
    """A swarm network by ID, name or unique ID prefix."""
    network = tx.get("networks", ref)
    if network is not None:
        return network
    named = tx.find("networks", name=ref)
    if len(named) == 1:
        return named[0]
    prefixed = tx.find("networks", id_prefix=ref)
    return prefixed[0] if len(prefixed) == 1 else None


def _existing(tx: Any, node_id: str, container_id: str, network_id: str) -> Task | None:
    for task in tx.find("tasks", node_id=node_id):
        if is_attachment(task) and attachment_container(task) == container_id \
                and any((n or {}).get("Target") == network_id for n in task.spec.get("Networks") or ()):
            return task
    return None


def _allocated(task: Task | None) -> bool:
    return task is not None and task.status.state >= TaskState.PENDING and bool(task.networks_attachments)


async def attach_network(store: Store, node_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Create (or find) the attachment task of a container on an attachable network, wait for its
    address, mark it RUNNING; answers {"task": <task record>}."""
    ref = _text(params, "network")
    container_id = _text(params, "container_id")
    container_name = _text(params, "container_name", required=False)
    aliases = params.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise InvalidArgument("aliases must be a list of strings")

    def create(tx: WriteTx) -> str:
        network = find_network(tx, ref)
        if network is None:
            raise NotFound(f"network {ref} not found")
        if not network.spec.get("Attachable"):
            raise PermissionDenied(f"network {ref} not manually attachable")
        if tx.get("nodes", node_id) is None:
            raise FailedPrecondition(f"node {node_id} is not part of the swarm")
        found = _existing(tx, node_id, container_id, network.id)
        if found is not None and found.status.state <= TaskState.RUNNING:
            return found.id
        target: dict[str, Any] = {"Target": network.id}
        if aliases:
            target["Aliases"] = list(aliases)
        task = Task(id=new_id(), node_id=node_id, desired_state=TaskState.RUNNING,
                    spec={ATTACHMENT_SPEC: {"ContainerID": container_id, "ContainerName": container_name},
                          "Networks": [target]},
                    status=TaskStatus(TaskState.NEW, format_time(time.time()), "created"))
        tx.create(task)
        return task.id

    task_id = await store.update(create)
    task = await _until_allocated(store, task_id)
    if task.status.state < TaskState.RUNNING:
        def running(tx: WriteTx) -> Task:
            current: Task | None = tx.get("tasks", task_id)
            if current is None:
                raise NotFound(f"attachment {task_id} was removed")
            if current.status.state < TaskState.RUNNING:
                current = current.copy()
                current.status.advance(TaskState.RUNNING, format_time(time.time()), ATTACHED_MESSAGE)
                tx.update(current)
            return current

        task = await store.update(running)
    return {"task": task.to_record()}


async def _until_allocated(store: Store, task_id: str) -> Task:
    try:
        async with asyncio.timeout(ALLOCATION_TIMEOUT):
            while True:
                task, sub = store.view_and_watch(lambda tx: tx.get("tasks", task_id), tables=("tasks",))
                try:
                    while True:
                        if task is None:
                            raise NotFound(f"attachment {task_id} was removed")
                        if _allocated(task):
                            return task
                        await sub.wait()
                        for event in sub.drain():
                            if event.obj.id == task_id:
                                task = None if event.op == "delete" else event.obj
                except WatchDropped:
                    continue
                finally:
                    sub.close()
    except TimeoutError:
        reason = store.view(lambda tx: (t := tx.get("tasks", task_id)) and t.status.err) or "no address yet"
        raise Unavailable(f"could not allocate an address for the attachment: {reason}") from None


async def detach_network(store: Store, node_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Delete the caller's attachment task (idempotent: one already gone is fine)."""
    task_id = _text(params, "task_id")

    def delete(tx: WriteTx) -> None:
        task: Task | None = tx.get("tasks", task_id)
        if task is None:
            return
        if not is_attachment(task) or task.node_id != node_id:
            raise PermissionDenied(f"task {task_id} is not an attachment of node {node_id}")
        tx.delete("tasks", task_id)

    await store.update(delete)
    return {}
