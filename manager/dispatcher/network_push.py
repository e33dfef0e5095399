"""The network push: what each node's data path and embedded DNS need, over its session stream.

Wire shape (one message kind on the session stream, beside "assignments"):

    {"kind": "networks", "type": "complete" | "incremental", "seq": 1, "data_path_port": 4789,
     "networks": [NetworkView, ...],   # complete: every network the node needs now;
                                       # incremental: the added or changed views only
     "removed": ["<network id>", ...]} # incremental: networks the node no longer needs ([] in a complete set)
    NetworkView = {"id", "name", "vni": int, "subnet": "10.0.1.0/24", "gateway": "10.0.1.1",
                   "mtu": int, "internal": bool, "ingress": bool, "attachable": bool,
                   "node_address": "10.0.1.3/24" or "",
                   "peers": [{"ip": "10.0.1.5", "mac": "02:42:0a:00:01:05", "vtep": "198.18.0.12"},
                             {"ip": "10.0.1.3", ..., "node": true}],   # "node": that node's own endpoint
                   "services": [{"name", "id", "mode": "vip" | "dnsrr", "vip": "", "aliases": [...],
                                 "ports": [{"protocol": "tcp", "published": 8080, "target": 80}],
                                 "tasks": [{"name": "web.1.<taskid>", "id", "container_id", "hostname",
                                            "address": "10.0.1.5", "aliases": [...]}]}]}

"seq" numbers a session's networks messages 1, 2, ...; the agent acknowledges the newest one its data
path has applied with the RPC `dispatcher.networks_applied` {"session_id", "seq"} (drain.py: a task
in rotation is stopped only once every node using its networks has applied its leaving).
The rules behind each field are in network_index.py. A node needs the networks of its tasks that
are not observed past RUNNING, plus ingress; a network is sent once allocated. A peer whose node
has no data-path address (Status.Addr) yet is left out until it has one.

Theory of operation (leader only; one `NetworkPush` per dispatcher, shared by every session):
- One store subscription feeds one `NetworkIndex` (network_index.py); it is attached while at
  least one session is open, and only sees what concerns networks (a task without network
  attachments is filtered out by an O(1) predicate, so a swarm without networks pays nothing).
- `flush()` drains it, applies the events to the index, and routes what changed, once per
  drain, whatever the number of sessions: a network whose metadata or DNS changed goes to
  every node using it; a change of one node's peers to every other node using the network; a
  node's own address to that node; a change of a node's set of networks to that node. Routing
  only marks: each session keeps the set of network IDs to resend and a flag to recompute its
  set, and sets its stream's wakeup. Nothing is queued, so nothing can be lost or overflow:
  however far a stream lags, it sends the latest view of each marked network once.
- `run()` (in the dispatcher's leader-term loop) flushes after every commit that concerns
  networks, so every node hears of a task that started or is stopping, or of a node's change,
  without timers. A session stream also flushes, synchronously, right after it takes its
  assignment snapshot or drains its assignment events, and sends its networks message before
  those tasks: a task's network is known to the agent before the task is.
- Each message a session sends takes the next `seq`; the agent's acknowledgements raise `acked`.
  The drain gate (drain.py) holds a task's stop until the sessions that were sent its leaving the
  rotation acknowledged it; `drain_waits` says which sessions, and which seq each.
- A session's first message after the hello is a complete set. A dropped subscription (the
  index lagged behind the store, or the store was restored) rebuilds the index from a fresh
  snapshot and sends every session a complete set again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from manager.dispatcher.drain import DRAIN_ACK_TIMEOUT, Acker, DrainGate, Hold
from manager.dispatcher.network_index import NETWORK_TABLES, Dirty, NetworkIndex, concerns_networks
from manager.store import Store, Subscription, WatchDropped
from model import Task

log = logging.getLogger("shoal.dispatcher")


class NetworkSession:
    """One session's side of the push: what it must send next, and what the agent holds."""

    def __init__(self, push: NetworkPush, node_id: str, wakeup: asyncio.Event) -> None:
        self.node_id = node_id
        self.wakeup = wakeup
        self.complete = True            # the next message is a complete set
        self.check = False              # the node's set of networks may have changed
        self.dirty: set[str] = set()    # networks whose view changed for this node
        self.sent: set[str] = set()     # networks the agent holds, as last told
        self.seq = 0                    # of the last message sent
        self.acked = 0                  # the newest seq the agent applied
        self.live = True                # its agent can still acknowledge (not superseded nor down)
        self._push = push

    def pending(self) -> bool:
        return self.complete or self.check or bool(self.dirty)

    def take(self) -> dict[str, Any] | None:
        """The message to send now (None: nothing changed for this node). Flushes first, so it
        covers every write committed so far."""
        return self._push.message_for(self)

    def hold(self, before: Task, network_ids: tuple[str, ...]) -> Hold | None:
        """Hold back the stop of `before`'s task, which just left the rotation of `network_ids`,
        in this session's stream (None: no node has to acknowledge anything)."""
        return self._push.drain.hold(before, self._push.drain_waits(network_ids), self.wakeup)

    def release(self, hold: Hold) -> None:
        self._push.drain.release(hold)

    def close(self) -> None:
        self._push.close(self)


class NetworkPush:
    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic,
                 drain_timeout: float = DRAIN_ACK_TIMEOUT) -> None:
        self._store = store
        self.drain = DrainGate(clock, drain_timeout)
        self.index = NetworkIndex()
        self._sub: Subscription | None = None
        self._attached = asyncio.Event()
        self._sessions: dict[str, list[NetworkSession]] = {}   # node ID -> its open sessions
        self.flushes = 0     # drains that had something to route
        self.resyncs = 0     # complete rebuilds after a dropped subscription

    # ---- sessions -------------------------------------------------------------------------------
    def open(self, node_id: str, wakeup: asyncio.Event) -> NetworkSession:
        """A new session of `node_id`; its first message will be a complete set."""
        if self._sub is None:
            self._attach()
        else:
            self.flush()
        session = NetworkSession(self, node_id, wakeup)
        self._sessions.setdefault(node_id, []).append(session)
        return session

    def close(self, session: NetworkSession) -> None:
        self.retire(session)
        sessions = self._sessions.get(session.node_id)
        if sessions is None or session not in sessions:
            return
        sessions.remove(session)
        if not sessions:
            del self._sessions[session.node_id]
        if not self._sessions and self._sub is not None:
            self._sub.close()       # nobody listens: stop paying for the feed and the index
            self._sub = None
            self.index = NetworkIndex()
            self._attached.clear()

    def retire(self, session: NetworkSession) -> None:
        """`session`'s agent can no longer acknowledge (superseded, its node down, or closed):
        no hold waits for it."""
        session.live = False
        self.drain.gone(session)

    def acked(self, session: NetworkSession, seq: int) -> None:
        """The session's agent applied the views of message `seq` (and so of every earlier one)."""
        seq = min(seq, session.seq)
        if seq > session.acked:
            session.acked = seq
            self.drain.acked(session)

    def drain_waits(self, network_ids: tuple[str, ...]) -> dict[Acker, int]:
        """For a task that has just left the rotation of `network_ids`: each live session whose
        node uses one of them (every session, for ingress), with the seq of the message that
        carries (or carried) the change, its next one while it is marked."""
        self.flush()
        waits: dict[Acker, int] = {}
        for network_id in network_ids:
            for node_id in self._users(network_id):
                for session in self._sessions.get(node_id, ()):
                    if session.live:
                        seq = session.seq + 1 if session.pending() else session.seq
                        waits[session] = max(waits.get(session, 0), seq)
        return waits

    def sessions(self) -> int:
        return sum(len(sessions) for sessions in self._sessions.values())

    def _attach(self) -> None:
        """A fresh index from a snapshot and a subscription to everything after it (no await
        in between)."""
        self.index = NetworkIndex()
        self._store.view(self.index.load)
        self._sub = self._store.watch(concerns_networks, tables=NETWORK_TABLES)
        self._attached.set()

    # ---- the feed ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Apply what was committed since the last flush and route it to the sessions."""
        sub = self._sub
        if sub is None or (not sub.pending() and not sub.closed):
            return   # the usual case on a stream's wake: nothing new
        try:
            events = sub.drain()
        except WatchDropped as exc:
            log.info("network push resyncs: %s", exc)
            self.resyncs += 1
            self._attach()
            for sessions in self._sessions.values():
                for session in sessions:
                    session.complete = True
                    session.wakeup.set()
            return
        index = self.index
        for event in events:
            index.apply(event)
        dirty = index.take_dirty()
        if dirty:
            self.flushes += 1
            self._route(dirty)

    def _route(self, dirty: Dirty) -> None:
        sessions = self._sessions
        if dirty.data_path_port:
            for node_sessions in sessions.values():
                for session in node_sessions:
                    session.complete = True
                    session.wakeup.set()
            return
        for node_id in sessions if dirty.all_nodes else dirty.nodes:
            for session in sessions.get(node_id, ()):
                session.check = True
                session.wakeup.set()
        for network_id in dirty.views:
            for node_id in self._users(network_id):
                self._mark(node_id, network_id)
        for network_id, changed in dirty.peers.items():
            if network_id in dirty.views:
                continue
            several = len(changed) > 1
            for node_id in self._users(network_id):
                if several or node_id not in changed:   # a node's own peers are not in its view
                    self._mark(node_id, network_id)
        for node_id, network_ids in dirty.own.items():
            for network_id in network_ids:
                self._mark(node_id, network_id)

    def _users(self, network_id: str) -> Any:
        users = self.index.users(network_id)
        return list(self._sessions) if users is None else users

    def _mark(self, node_id: str, network_id: str) -> None:
        for session in self._sessions.get(node_id, ()):
            session.dirty.add(network_id)
            session.wakeup.set()

    async def run(self) -> None:
        """Flush after every commit that concerns networks, while sessions are open. Runs for
        the leadership term (the dispatcher's `run`)."""
        while True:
            sub = self._sub
            if sub is None:
                await self._attached.wait()
                continue
            try:
                await sub.wait()
            except WatchDropped:
                pass
            if sub is self._sub:
                try:
                    self.flush()
                except Exception:   # a bug here must not end the heartbeat monitor's term with it
                    log.exception("network push: routing failed")

    # ---- messages -----------------------------------------------------------------------------------
    def message_for(self, session: NetworkSession) -> dict[str, Any] | None:
        self.flush()
        if not session.pending():
            return None   # every change of the node's set or views marks the session
        index = self.index
        node_id = session.node_id
        needed = index.needed(node_id)
        complete = session.complete
        if complete:
            changed = sorted(needed)
            removed: list[str] = []
        else:
            changed = sorted((needed - session.sent) | (session.dirty & needed))
            removed = sorted(session.sent - needed)
        session.complete = session.check = False
        session.dirty = set()
        session.sent = needed
        if not complete and not changed and not removed:
            self.drain.settled(session)
            return None
        session.seq += 1
        return {"kind": "networks", "type": "complete" if complete else "incremental", "seq": session.seq,
                "data_path_port": index.data_path_port,
                "networks": [index.view(network_id, node_id) for network_id in changed], "removed": removed}
