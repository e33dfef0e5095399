"""The leader's side of standalone containers' network attachments (manager/dispatcher/
attachments.py), on an in-memory store with the real allocator's leader loop: an attachment task
is created on the caller's node, addressed, marked RUNNING and answered; asked again it is the
same task; a non-attachable or unknown network is refused with Docker's text; detaching deletes
it (its address is free again), and only its own node may; the attachments of a node that left
the swarm are orphaned. Attachment tasks are no assignment of
the node's agent, the reaper leaves them alone, and the network index names them after the
container for DNS."""

from __future__ import annotations

import pytest

from manager.dispatcher.assignments import _node_tasks, route_event
from manager.dispatcher.attachments import attach_network, detach_network, is_attachment
from manager.dispatcher.network_index import task_contribution
from manager.orchestrator.reaper import TaskReaper
from manager.store import Event
from model import Node, Task, TaskState
from rpc.errors import NotFound, PermissionDenied
from tests.api.support import allocating
from tests.unit.test_allocator import get, network, new_store, put

NODE = "n0de0000000000000000000001"
OTHER = "other00000000000000000000"
CID = "c" * 64


async def test_attach_allocates_marks_running_and_detach_frees() -> None:
    store = new_store()
    ov = network("ov", Attachable=True)
    closed = network("closed")
    await put(store, ov, closed, Node(id=NODE), Node(id=OTHER))
    async with allocating(store):
        reply = await attach_network(store, NODE, {"network": "ov", "container_id": CID, "container_name": "web1",
                                                   "aliases": ["db"]})
        task = Task.from_record(reply["task"])
        assert is_attachment(task) and task.node_id == NODE and task.service_id == ""
        assert task.status.state is TaskState.RUNNING
        assert task.spec["Networks"] == [{"Target": ov.id, "Aliases": ["db"]}]
        [attachment] = task.networks_attachments
        assert attachment["Network"]["ID"] == ov.id and attachment["Addresses"][0].startswith("10.0.")
        again = await attach_network(store, NODE, {"network": ov.id, "container_id": CID, "container_name": "web1"})
        assert again["task"]["id"] == task.id     # re-requested (a restarted node): the same attachment

        with pytest.raises(PermissionDenied, match="network closed not manually attachable"):
            await attach_network(store, NODE, {"network": "closed", "container_id": CID})
        with pytest.raises(NotFound, match="network nope not found"):
            await attach_network(store, NODE, {"network": "nope", "container_id": CID})
        with pytest.raises(PermissionDenied):
            await detach_network(store, OTHER, {"task_id": task.id})

        # no work for the agent; the reaper leaves it; DNS knows it by the container's name
        assert route_event(Event("update", "tasks", task, task)) == ()
        assert store.view(lambda tx: _node_tasks(tx, NODE)) == []
        reaper = TaskReaper(store)
        await store.update(lambda tx: reaper.reconcile_service(tx, "", 0.0))
        assert get(store, "tasks", task.id).desired_state is TaskState.RUNNING
        contribution = task_contribution(get(store, "tasks", task.id))
        assert contribution is not None
        dns = contribution[3][0][2]
        assert dns is not None and dns[:2] == ("web1", CID[:12]) and dns[3] == ("db",)

        await detach_network(store, NODE, {"task_id": task.id})
        assert get(store, "tasks", task.id) is None
        await detach_network(store, NODE, {"task_id": task.id})       # idempotent

        # a node that left the swarm: the reaper orphans its attachments, which frees their addresses
        other = Task.from_record((await attach_network(store, OTHER, {"network": "ov", "container_id": CID}))["task"])
        await store.update(lambda tx: tx.delete("nodes", OTHER))
        await store.update(lambda tx: reaper.reconcile_service(tx, "", 0.0))
        assert get(store, "tasks", other.id).status.state is TaskState.ORPHANED
