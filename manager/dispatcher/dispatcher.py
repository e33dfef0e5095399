"""The dispatcher: one session per worker, heartbeats, and task status from workers.

Theory of operation: the dispatcher lives only on the leader, owned by the leadership term.
- A node's session opens with its description; the node becomes READY and gets its assignment
  stream (see assignments.py). The session carries an ID; heartbeats and status updates must
  name the current session, so a stale agent connection cannot write.
- Heartbeats reset a deadline of `period * GRACE_MULTIPLIER`; a session whose connection closes
  keeps only DISCONNECT_GRACE of it, and a node whose connection was cut for not answering
  keepalive probes (gone, or cut off: see rpc/liveness.py) none at all. A monitor marks a node DOWN
  when its deadline passes and ends its session; the agent then opens a new session, which
  makes the node READY again. When a leader starts, every node gets a fresh full grace, so a
  failover never marks healthy nodes down; when the monitor itself runs late (a stalled event
  loop), every deadline moves by that much (heartbeats.py), so a busy leader does not either.
- A node's state moves along the table in model/node_state.py: registering makes it READY from
  any state; the monitor's DOWN for a node already down is no write at all, and a move the
  table refuses (a bug) is logged with its traceback and changes nothing.
- Status updates only move a task's state forward, and only for tasks assigned to the
  reporting node. Reports of all nodes are written together (status.py: group commit).
- Each session also carries the networks its node needs (network_push.py): a complete set
  first, then only changes, routed from one shared index to the nodes they concern. The agent
  acknowledges the networks messages its data path has applied (`networks_applied`); a task in
  rotation is told to stop only once the nodes using its networks have applied its leaving it,
  or DRAIN_ACK_TIMEOUT has passed (drain.py). The monitor ends the holds that are overdue, and a
  session superseded or ended by the monitor is waited for no more.
- Other leader components reach an agent through its session: `send_to_node` queues a message
  into the node's outbox (outbox.py), which the session stream interleaves with assignments;
  `on_session_closed` tells them when a node's session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from manager.dispatcher.assignments import assignment_fanout, assignment_stream
from manager.dispatcher.drain import DRAIN_ACK_TIMEOUT
from manager.dispatcher.heartbeats import HeartbeatDeadlines
from manager.dispatcher.network_push import NetworkPush, NetworkSession
from manager.dispatcher.outbox import NodeOutboxes
from manager.dispatcher.status import StatusBatcher
from manager.store import ReadTx, Store, WriteTx, retry_on_conflict
from model import IllegalTransition, Node, NodeState, TaskState, new_id
from rpc.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

# Task states bound once: reading a member off the Enum class costs ~70 ns, and these
# comparisons run for every task of every write.
_ACCEPTED = TaskState.ACCEPTED

log = logging.getLogger("shoal.dispatcher")

DEFAULT_HEARTBEAT_PERIOD = 5.0
GRACE_MULTIPLIER = 3
MONITOR_INTERVAL = 0.2
# Seconds a node whose connection closed has to open a new session. A closed connection (the
# kernel answered) means the daemon died or restarted while its host, and so its containers,
# live on: long enough for a restarted daemon to come back and re-adopt them (live restore)
# rather than have them duplicated elsewhere; still shorter than Docker's heartbeat grace. A
# host that is gone or cut off is caught by keepalive probes in about 3 s (peer_unreachable).
DISCONNECT_GRACE = 10.0


def heartbeat_period_of(tx: ReadTx) -> float:
    clusters = tx.all("clusters")
    if not clusters:
        return DEFAULT_HEARTBEAT_PERIOD
    nanos = ((clusters[0].spec.get("Dispatcher") or {}).get("HeartbeatPeriod")) or 0
    return nanos / 1e9 if nanos else DEFAULT_HEARTBEAT_PERIOD


@dataclass
class _Session:
    session_id: str
    node_id: str
    networks: NetworkSession | None = None   # its side of the network push, once open


class Dispatcher:
    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 drain_timeout: float = DRAIN_ACK_TIMEOUT,
                 on_heartbeat_miss: Callable[[], None] | None = None) -> None:
        self._store = store
        self._on_heartbeat_miss = on_heartbeat_miss    # told each time a node is marked down for it
        self._clock = clock
        self._sessions: dict[str, _Session] = {}       # node_id -> current session
        self._sleep = sleep
        self._heartbeats = HeartbeatDeadlines(MONITOR_INTERVAL)
        self._deadlines = self._heartbeats.deadlines   # node_id -> when it is declared down
        self._outboxes = NodeOutboxes()
        self._assignments = assignment_fanout(store)   # one store watcher for every session
        self._status = StatusBatcher(store, _apply_status)  # all nodes' reports, written together
        self._networks = NetworkPush(store, clock, drain_timeout)  # networks, peers and DNS of each node's tasks

    @property
    def store(self) -> Store:
        """The leader's store (the attachment RPCs of attachments.py write through it)."""
        return self._store

    # ---- leader-term loop ---------------------------------------------------------------------
    async def run(self) -> None:
        """Mark nodes DOWN when their heartbeats stop, and push network changes to the sessions
        of the nodes they concern. Runs for one leadership term."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._networks.run(), name="network-push")
            await self._monitor()

    async def _monitor(self) -> None:
        period = self._store.view(heartbeat_period_of)
        start = self._clock()
        for node in self._store.view(lambda tx: tx.all("nodes")):
            self._deadlines[node.id] = start + period * GRACE_MULTIPLIER
        self._heartbeats.start(start)
        while True:
            await self._sleep(MONITOR_INTERVAL)
            self._networks.drain.expire()
            for node_id in self._heartbeats.expired(self._clock()):
                self._end_session(self._sessions.pop(node_id, None))
                if self._on_heartbeat_miss is not None:
                    self._on_heartbeat_miss()
                await self._set_node_state(node_id, NodeState.DOWN, "heartbeat failure")

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def _end_session(self, session: _Session | None) -> None:
        """`session` can no longer answer (superseded, or its node declared down)."""
        if session is not None and session.networks is not None:
            self._networks.retire(session.networks)

    # ---- RPC handlers -------------------------------------------------------------------------
    async def session(self, node_id: str, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        node = self._store.view(lambda tx: tx.get("nodes", node_id))
        if node is None:
            raise PermissionDenied(f"node {node_id} is not a member of this swarm (removed?)")
        session_id = new_id()
        period = self._store.view(heartbeat_period_of)
        mine = _Session(session_id, node_id)
        self._end_session(self._sessions.get(node_id))
        self._sessions[node_id] = mine
        self._deadlines[node_id] = self._clock() + period * GRACE_MULTIPLIER
        description = params.get("description") or {}
        addr = str(params.get("addr") or "")
        await self._register(node_id, description, addr)
        log.info("session opened", extra={"node": node_id, "session": session_id})

        def hello(tx: ReadTx) -> dict[str, Any]:
            return {"kind": "session", "session_id": session_id, "node_id": node_id,
                    "heartbeat_period": heartbeat_period_of(tx)}

        outbox = self._outboxes.open(node_id, session_id)
        networks: NetworkSession | None = None
        try:
            networks = mine.networks = self._networks.open(node_id, outbox.wakeup)
            stream = assignment_stream(self._store, node_id, hello, self._assignments, outbox, networks)
            async with contextlib.aclosing(stream) as messages:
                async for message in messages:
                    current = self._sessions.get(node_id)
                    if current is None or current.session_id != session_id:
                        raise FailedPrecondition("session superseded or expired; open a new one")
                    yield message
        finally:
            if networks is not None:
                networks.close()
            self._outboxes.close(node_id, session_id)
            self._connection_lost(node_id, session_id)

    def send_to_node(self, node_id: str, message: dict[str, Any]) -> bool:
        """Queue `message` on the node's session stream; False when it has no open session."""
        return self._outboxes.send(node_id, message)

    def on_session_closed(self, listener: Callable[[str], None]) -> None:
        """Call `listener(node_id)` whenever a node's session ends."""
        self._outboxes.on_closed(listener)

    def _connection_lost(self, node_id: str, session_id: str) -> None:
        """The session's stream ended: the daemon died or restarted (its kernel closed the
        socket), so shorten its grace to DISCONNECT_GRACE. A restarted daemon opens a new session
        within it and keeps its tasks; a busy one keeps its connection and its full grace."""
        current = self._sessions.get(node_id)
        if current is None or current.session_id != session_id or node_id not in self._deadlines:
            return
        self._deadlines[node_id] = min(self._deadlines[node_id], self._clock() + DISCONNECT_GRACE)

    def peer_unreachable(self, node_id: str) -> None:
        """The node's connection was cut for not answering keepalive probes: it is gone or cut
        off (a busy node's kernel still answers them), so it gets no grace at all."""
        if node_id in self._deadlines:
            self._deadlines[node_id] = min(self._deadlines[node_id], self._clock())

    def _check_session(self, node_id: str, session_id: str) -> _Session:
        current = self._sessions.get(node_id)
        if current is None or current.session_id != session_id:
            raise FailedPrecondition("session superseded or expired; open a new one")
        return current

    async def heartbeat(self, node_id: str, params: dict[str, Any]) -> dict[str, Any]:
        self._check_session(node_id, str(params.get("session_id", "")))
        period = self._store.view(heartbeat_period_of)
        self._deadlines[node_id] = self._clock() + period * GRACE_MULTIPLIER
        return {"period": period}

    async def networks_applied(self, node_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """The agent's data path has applied the networks messages of its session up to `seq`."""
        current = self._check_session(node_id, str(params.get("session_id", "")))
        seq = params.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise InvalidArgument(f"seq must be a non-negative integer, not {seq!r}")
        if current.networks is not None:
            self._networks.acked(current.networks, seq)
        return {}

    async def update_status(self, node_id: str, params: dict[str, Any]) -> dict[str, Any]:
        self._check_session(node_id, str(params.get("session_id", "")))
        updates = list(params.get("updates") or [])
        if not updates:
            return {"applied": 0}
        return {"applied": await self._status.submit(node_id, updates)}

    # ---- node state -------------------------------------------------------------------------
    async def _register(self, node_id: str, description: dict[str, Any], addr: str) -> None:
        def fn(tx: WriteTx) -> None:
            node = tx.get("nodes", node_id)
            if node is None:
                raise NotFound(f"node {node_id} not found")
            updated = node.copy()
            updated.set_state(NodeState.READY, "", addr or node.status.get("Addr", ""))  # legal from any state
            if description:
                updated.description = description
            if updated.status == node.status and updated.description == node.description:
                return  # a reconnect with nothing new: no write, no version bump racing users' updates
            tx.update(updated)

        await retry_on_conflict(lambda: self._store.update(fn))

    async def _set_node_state(self, node_id: str, state: NodeState, message: str) -> None:
        def fn(tx: WriteTx) -> None:
            node: Node | None = tx.get("nodes", node_id)
            if node is None or node.state is state:
                return  # gone, or already there (a down node's deadline after a leader change)
            node = node.copy()
            node.set_state(state, message)  # IllegalNodeTransition: logged below, nothing written
            tx.update(node)

        try:
            await retry_on_conflict(lambda: self._store.update(fn))
            log.info("node state", extra={"node": node_id, "state": state, "reason": message})
        except Exception:
            log.exception("could not mark node %s %s", node_id, state)


_STATE_BY_API = {state.api: state for state in TaskState}


def _apply_status(tx: WriteTx, node_id: str, update: dict[str, Any]) -> None:
    task = tx.get("tasks", str(update.get("task_id", "")))
    if task is None:
        return  # removed meanwhile: nothing to report on
    if task.node_id != node_id:
        raise PermissionDenied(f"task {task.id} is not assigned to node {node_id}")
    report = update.get("status") or {}
    text = report.get("State", "new")
    state = _STATE_BY_API.get(text)
    if state is None:
        state = TaskState.from_api(text)  # another spelling, or the error naming it
    if state < task.status.state or state < _ACCEPTED:
        return  # stale or not a worker's state to report
    task = task.copy()
    try:
        task.status.advance(state, report.get("Timestamp", ""), report.get("Message", ""), report.get("Err", ""))
    except IllegalTransition:
        return
    task.status.container_status = report.get("ContainerStatus")
    task.status.port_status = report.get("PortStatus") or None
    tx.update(task)
