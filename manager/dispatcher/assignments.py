"""The assignment stream of one node's session.

Theory of operation: the stream starts with the node's complete set of tasks, sent in chunks so
no message grows with the cluster (a 4 MB cap once left swarm workers stuck in ASSIGNED), then
only increments. A snapshot and a store subscription are taken atomically, so nothing is lost
or repeated between them. A subscription dropped for lagging is answered by a fresh complete
set. The manager list rides on the same stream, so agents always know where to fail over.

Routing: all sessions share one store fan-out (`assignment_fanout`). A task event goes only to
the sessions of the node it is on and, when it moved, of the node it left; a node event goes
only to that node's session, or to every session when it changes the manager list. So a
write costs O(1) however many nodes hold sessions. A task update that only echoes the node's
own status report (past ASSIGNED, nothing else changed) goes nowhere.

Networks: with a `NetworkSession` (network_push.py) the stream also carries the node's networks,
peers and DNS: a complete set right after the hello, then changes, each taken with no await
after the snapshot or the drain of task events it precedes, so an agent always knows a task's
networks before the task.

Drain: the change that tells the node to stop a task in rotation (its desired state past RUNNING)
waits, in this stream only, until the nodes using the task's networks have applied its leaving
the rotation (drain.py); the stream's other changes flow on, and the task is then sent as the
store has it.

Network attachments of standalone containers (attachments.py) are tasks the stream never carries:
they are no work for the agent (their node learns of them from its own request and its networks).

Secrets and configs: a message that carries tasks also carries the data of exactly the secrets
and configs those tasks refer to (`"secrets"`/`"configs"`: ID → base64 data, or
{"Data", "Templating"} for a templated one, only when
non-empty), and only for tasks that may still be prepared (desired state up to RUNNING, or
COMPLETE for a job's tasks). So
only the node of a task that uses a secret ever receives it. Their data never changes (an
update can change only labels), so the copy sent with a task stays right for its life, and
reading it when the message is sent (a short view per message that needs data) agrees with
the snapshot the tasks came from; one deleted meanwhile is left out and the node rejects the
task, naming it. A task without references costs two dict look-ups.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

from manager.dispatcher.attachments import ATTACHMENT_SPEC
from manager.dispatcher.drain import HeldTasks
from manager.dispatcher.network_push import NetworkSession
from manager.dispatcher.outbox import Outbox
from manager.store import BROADCAST, Event, Fanout, ReadTx, Store, WatchDropped
from model import Node, Task, TaskState
from model.references import references

# Task states bound once: reading a member off the Enum class costs ~70 ns, and these
# comparisons run for every task of every write.
_ASSIGNED = TaskState.ASSIGNED
_COMPLETE = TaskState.COMPLETE   # a job's tasks are desired COMPLETE: they still run

CHUNK = 200


def task_wire(task: Task) -> dict[str, Any]:
    return task.to_record()


def managers_of(tx: ReadTx) -> list[dict[str, str]]:
    out = []
    for node in tx.all("nodes"):
        status = node.manager_status or {}
        if node.role == "manager" and status.get("Addr"):
            out.append({"node_id": node.id, "addr": status["Addr"]})
    return sorted(out, key=lambda m: m["node_id"])


def needs_dependencies(task: Task) -> bool:
    """Does the task refer to secrets or configs and may it still be prepared? O(1)."""
    return task.desired_state <= _COMPLETE and bool(references(task.spec))


def dependency_data(tx: ReadTx, tasks: list[Task]) -> dict[str, dict[str, Any]]:
    """{"secrets": {ID: data}, "configs": {ID: data}} for what `tasks` refer to, the empty
    kinds left out; a templated one's entry is {"Data": data, "Templating": driver}. A
    reference to an object that is gone is left out too: the node then
    rejects the task, naming what is missing."""
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        for kind, obj_id in references(task.spec):
            table = f"{kind}s"
            if obj_id in out.get(table, ()):
                continue
            obj = tx.get(table, obj_id)
            if obj is not None:
                data = str(obj.spec.get("Data") or "")
                templating = obj.spec.get("Templating")
                # a templated one goes with its driver: the node renders it for each task
                out.setdefault(table, {})[obj_id] = {"Data": data, "Templating": templating} if templating else data
    return out


def _with_dependencies(store: Store, message: dict[str, Any], tasks: list[Task]) -> dict[str, Any]:
    """`message` plus the data of what `tasks` (those that need it) refer to."""
    if tasks:
        message.update(store.view(lambda tx: dependency_data(tx, tasks)))
    return message


def _node_tasks(tx: ReadTx, node_id: str) -> list[Task]:
    return [t for t in tx.find("tasks", node_id=node_id) if ATTACHMENT_SPEC not in t.spec]


def status_only_change(old: Task, new: Task) -> bool:
    """`new` differs from `old` in its observed status (and version) only, and is past ASSIGNED:
    the node's own status report coming back. The agent tracks that status itself, so the
    update is not sent (the next complete set carries it anyway)."""
    return bool(new.status.state > _ASSIGNED and old.node_id == new.node_id
                and old.desired_state == new.desired_state and (old.spec is new.spec or old.spec == new.spec)
                and old.networks_attachments == new.networks_attachments and old.labels == new.labels
                and old.job_iteration == new.job_iteration and old.service_id == new.service_id
                and old.slot == new.slot and old.service_name == new.service_name)


def route_event(event: Event) -> tuple[str, ...]:
    """The node IDs whose sessions an event concerns (BROADCAST: every session)."""
    if event.table == "tasks":
        if ATTACHMENT_SPEC in event.obj.spec:
            return ()       # a standalone container's network attachment: no work for the agent
        now = event.obj.node_id
        if event.old is None:
            return (now,)
        before = event.old.node_id
        if before == now:
            return () if event.op == "update" and status_only_change(event.old, event.obj) else (now,)
        return (now, before) if before else (now,)  # "" is no node: nothing left behind
    if _manager_change(event):
        return (BROADCAST,)
    return (event.obj.id,)


def assignment_fanout(store: Store) -> Fanout:
    """The one store fan-out all of a dispatcher's sessions subscribe to, keyed by node ID."""
    return store.fanout(("tasks", "nodes"), route_event)


async def assignment_stream(store: Store, node_id: str, session_message: Callable[[ReadTx], dict[str, Any]],
                            fanout: Fanout | None = None, outbox: Outbox | None = None,
                            networks: NetworkSession | None = None) -> AsyncGenerator[dict[str, Any], None]:
    """Yield the session message, then assignments and manager lists, until cancelled.
    `fanout`: the dispatcher's shared `assignment_fanout` (one of its own when not given);
    `outbox`: messages of other leader components, sent between the stream's own ones;
    `networks`: the session's side of the network push (network_push.py), whose messages go
    before the tasks that use their networks (it shares the outbox's wakeup when both are given)."""
    feed = fanout if fanout is not None else assignment_fanout(store)
    wakeup = outbox.wakeup if outbox is not None else networks.wakeup if networks is not None else None
    held = HeldTasks(node_id, networks)
    try:
        first = True
        while True:
            def snapshot(tx: ReadTx) -> tuple[dict[str, Any], list[Task], list[dict[str, str]], Node | None]:
                return session_message(tx), _node_tasks(tx, node_id), managers_of(tx), tx.get("nodes", node_id)

            hello, tasks, managers, own = store.view(snapshot)
            tasks = held.complete(tasks)
            sub = feed.subscribe(node_id, wakeup=wakeup)  # no await since the snapshot: nothing missed or repeated
            try:
                # The networks as of this snapshot (or later): the complete set first, then any change.
                network_message = networks.take() if networks is not None else None
                if first:
                    yield hello
                    first = False
                if network_message is not None:
                    yield network_message
                for start in range(0, max(len(tasks), 1), CHUNK):
                    chunk = tasks[start:start + CHUNK]
                    yield _with_dependencies(
                        store, {"kind": "assignments", "type": "complete", "tasks": [task_wire(t) for t in chunk],
                                "more": start + CHUNK < len(tasks)},
                        [t for t in chunk if needs_dependencies(t)])
                yield {"kind": "managers", "managers": managers}
                if own is not None:
                    yield node_message(own)
                while True:
                    if wakeup is None:
                        await sub.wait()
                    else:
                        while not sub.pending() and not sub.closed and not (outbox is not None and outbox.pending()) \
                                and not (networks is not None and networks.pending()) and not held.ready():
                            wakeup.clear()
                            await wakeup.wait()
                        if outbox is not None and outbox.pending():
                            for message in outbox.take():
                                yield message
                    events = sub.drain()
                    if networks is not None:
                        # Taken with no await since the drain: it covers the networks of these tasks.
                        network_message = networks.take()
                        if network_message is not None:
                            yield network_message
                    updates: dict[str, Task] = {}
                    removes: set[str] = set()
                    managers_changed = False
                    own_update: Node | None = None
                    for event in events:
                        if event.table == "nodes":
                            managers_changed = managers_changed or _manager_change(event)
                            if event.obj.id == node_id and event.op != "delete":
                                own_update = event.obj
                            continue
                        task = event.obj
                        if held.absorb(event):
                            continue   # sent as the store has it once its hold ends
                        if event.op == "delete" or task.node_id != node_id:
                            removes.add(task.id)
                            updates.pop(task.id, None)
                        else:
                            updates[task.id] = task
                            removes.discard(task.id)
                    _read_released(store, node_id, held.take_released(), updates, removes)
                    if updates or removes:
                        changed: list[Task | str] = [*updates.values(), *sorted(removes)]
                        for start in range(0, len(changed), CHUNK):
                            yield _incremental(store, changed[start:start + CHUNK])
                    if managers_changed:
                        yield {"kind": "managers", "managers": store.view(managers_of)}
                    if own_update is not None:
                        yield node_message(own_update)
            except WatchDropped:
                continue  # lagged: resend the complete set from a fresh snapshot
            finally:
                sub.close()
    finally:
        held.close()


def _read_released(store: Store, node_id: str, released: list[str], updates: dict[str, Task],
                   removes: set[str]) -> None:
    """Held tasks whose hold ended, as the store has them now: an update, or a remove when the
    task is gone or no longer on the node."""
    if not released:
        return
    current = store.view(lambda tx: {task_id: tx.get("tasks", task_id) for task_id in released})
    for task_id, task in current.items():
        if task is None or task.node_id != node_id:
            removes.add(task_id)
        else:
            updates[task_id] = task


def _incremental(store: Store, changed: list[Task | str]) -> dict[str, Any]:
    """One incremental message: a Task is an update, a task ID a remove."""
    items: list[dict[str, Any]] = []
    needing: list[Task] = []
    for change in changed:
        if isinstance(change, str):
            items.append({"action": "remove", "task_id": change})
        else:
            items.append({"action": "update", "task": task_wire(change)})
            if needs_dependencies(change):
                needing.append(change)
    return _with_dependencies(store, {"kind": "assignments", "type": "incremental", "changes": items}, needing)


def node_message(node: Node) -> dict[str, Any]:
    """What a node needs to know of itself: the role it should have, whether it is in Raft, and
    whether it should renew its certificate (State "rotate", with the issuer and trust bundle
    wanted: root CA rotation, manager/swarm/ca_rotation.py)."""
    return {"kind": "node", "role": node.role, "raft_member": node.manager_status is not None,
            "certificate": dict(node.certificate)}


def _manager_change(event: Event) -> bool:
    def key(node: Node | None) -> tuple[str, str] | None:
        if node is None or node.role != "manager":
            return None
        return node.role, str((node.manager_status or {}).get("Addr", ""))

    return event.op == "delete" or key(event.obj) != key(event.old)
