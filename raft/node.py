"""The asyncio driver of a Raft node: the only place where the pure core meets disks, sockets, clocks.

Theory of operation
-------------------
One `RaftNode` owns a `RaftCore`, a `DiskStorage` and a `Transport`, and a TaskGroup holding two
loops. The *tick loop* calls `core.tick()` every `tick_interval` seconds. The *ready loop* waits for
work and, for each `Ready`, in order: persists its snapshot, entries and hard state (group commit,
fsync; a Ready that only moves the commit index is written without waiting for an fsync) → sends its
messages (a leader's appends and heartbeats leave while its own write runs: nothing that could count
its not-yet-durable copy as a replica surfaces before the write returns) → applies the snapshot and
committed entries to the `StateMachine` → resolves read states →
`core.advance(ready)` → takes a snapshot every `snapshot_every` applied entries and compacts the log.
Incoming messages are stepped into the core straight from the transport callback; everything runs on
one event loop, so the core is never touched concurrently.

`propose(data)` resolves with the state machine's result once the entry is committed *and applied*.
It is matched by (index, term): if a new leader overwrote the index, the caller gets ProposalDropped.
`read_index()` returns once the state machine has applied up to a read point confirmed by a quorum,
so a read that follows it is linearizable. Both raise NotLeader quickly when the core knows it cannot
serve them.

Membership: each member's address travels in `ConfChange.context` as msgpack
`{"raft": "host:port", ...extra}`; founding members' addresses come from the constructor. The address
book is carried inside every snapshot (the snapshot's data wraps the application's bytes), so a node
restored from a snapshot can reach its peers.

Removed and refused members (raft/retired.py): their addresses are kept apart from `members`, and
lanes to them are opened only while a REMOVED is on its way. `removed` says this node knows it was
removed; it is logged once when it turns true (and again should it turn false: added back under
the same id). The read-only accessors (role, leader, indexes, status) are in raft/node_view.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from raft.confchange import decode_conf_change
from raft.config import Config
from raft.core import RaftCore
from raft.members import (
    Member,
    _unwrap_snapshot,
    _wrap_snapshot,
    read_refused_members,
)
from raft.node_view import NodeView
from raft.retired import RetiredLanes
from raft.storage import DiskStorage, RecordCipher
from raft.transport import Address, Transport
from raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    Ready,
    Role,
    Snapshot,
)

log = logging.getLogger("raft.node")

# Leader messages that may leave before the Ready's own entries are durable (see _handle_ready).
_OVERLAPPABLE = (MessageType.APPEND, MessageType.HEARTBEAT)


class StateMachine(Protocol):
    """What a RaftNode replicates. `apply` sees committed NORMAL entries with non-empty data, in log
    order, exactly once per process lifetime after `restore` (the machine is rebuilt on restart from
    the latest snapshot plus the log); it must be deterministic."""

    def apply(self, entry: Entry) -> Any: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class NodeStopped(Exception):
    """The node shut down before the request could complete."""


@dataclass
class NodeOptions:
    tick_interval: float = 0.05         # seconds per tick
    election_tick: int = 10             # → elections after 0.5 to 1.0 s of silence
    heartbeat_tick: int = 1
    snapshot_every: int = 10_000        # applied entries between snapshots
    segment_size: int = 64 << 20
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    snapshot_chunk_size: int = 1 << 20
    fsync: Callable[[int], None] | None = None   # injectable, e.g. to count fsyncs in tests
    inline_sync_bytes: int = 0          # fsync batches below this size on the loop, not a thread
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    external_listener: bool = False     # the owner of the port hands over inbound connections
    dial_preamble: bytes = b""          # written first on each outgoing connection
    on_leader_change: Callable[[int], None] | None = None   # told the leader (0: none) on each soft-state change
    cipher: RecordCipher | None = None  # encryption at rest of the log and snapshots (raft/wal.py)


class RaftNode(NodeView):
    def __init__(self, node_id: int, data_dir: str, state_machine: StateMachine, *,
                 members: dict[int, Member], bootstrap: bool = True,
                 options: NodeOptions | None = None) -> None:
        """`members` are the addresses known at start (founding members, or the cluster a new node
        joins); `bootstrap` makes a node with an empty data dir found a cluster of those members.
        A node started with bootstrap=False waits to be added by the leader."""
        if node_id not in members:
            raise ValueError(f"node {node_id} is missing from members {sorted(members)}")
        self.id = node_id
        self.data_dir = data_dir
        self.sm = state_machine
        self.opts = options or NodeOptions()
        self.members: dict[int, Member] = dict(members)
        self._reported_removed = False          # what was last logged about `removed`
        self._bootstrap = bootstrap
        self.storage = DiskStorage(data_dir, segment_size=self.opts.segment_size, fsync=self.opts.fsync,
                                   inline_sync_bytes=self.opts.inline_sync_bytes, cipher=self.opts.cipher)
        self.core: RaftCore | None = None
        self.transport = Transport(node_id, members[node_id].raft, self._deliver,
                                   on_unreachable=self._unreachable, server_ssl=self.opts.server_ssl,
                                   client_ssl=self.opts.client_ssl,
                                   external_listener=self.opts.external_listener,
                                   dial_preamble=self.opts.dial_preamble)
        self.lanes = RetiredLanes(node_id, self.transport, self.members, self.opts.election_tick)
        self.retired = self.lanes.retired       # removed members' addresses, so REMOVED reaches them
        self.refused = self.lanes.refused       # members of a cluster left behind (REFUSED_FILE)
        self._wake = asyncio.Event()
        self._proposals: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._applied_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._read_ids = itertools.count(1)
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready_loop_done = asyncio.Event()
        self._last_snapshot_index = 0
        self._synced_term_vote = (0, 0)
        self.last_heard: dict[int, float] = {}  # peer → loop time of its last message (liveness)
        self._changed = asyncio.Event()         # replaced and set after every round of work: see wait_until
        self.fatal: BaseException | None = None
        self.failed = asyncio.Event()           # set when a fatal error (e.g. a failed fsync) stops it
        self.ticks = 0                          # ticks delivered so far (diagnostics: tick-loop lag)

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> Address:
        """Load state, listen, and start the loops; returns the bound raft address."""
        loaded = await asyncio.to_thread(self.storage.load)
        refused = await asyncio.to_thread(read_refused_members, self.data_dir)
        self.refused.clear()
        self.refused.update(set(refused) - {self.id})
        for i in self.refused:
            self.members.pop(i, None)
            self.retired[i] = refused[i]
        applied = 0
        if loaded.snapshot is not None:
            wrapped = _unwrap_snapshot(loaded.snapshot.data)
            for i, m in wrapped.members.items():
                self.members.setdefault(i, m)
            for i, m in wrapped.retired.items():
                if i not in wrapped.members and i != self.id:
                    self.retired[i] = m
                    self.members.pop(i, None)   # removed by then, whatever the caller's list says
            self.sm.restore(wrapped.app)
            applied = loaded.snapshot.meta.index
            self._last_snapshot_index = applied
        hs = loaded.hard_state
        if hs is not None and loaded.entries and hs.commit > loaded.entries[-1].index:
            raise RuntimeError(f"{self.data_dir}: commit {hs.commit} beyond the log's last entry")
        if hs is not None:
            self._synced_term_vote = (hs.term, hs.vote)
        # Founding members' addresses may be needed before the log is replayed; later joiners'
        # addresses are in the log and the snapshot.
        for e in loaded.entries:
            if e.type == EntryType.CONF_CHANGE:
                self._learn_address(e)
        brand_new = hs is None and loaded.snapshot is None and not loaded.entries
        peers = ConfState(voters=tuple(sorted(self.members))) if (brand_new and self._bootstrap) else None
        cfg = Config(id=self.id, election_tick=self.opts.election_tick, heartbeat_tick=self.opts.heartbeat_tick,
                     max_size_per_msg=self.opts.max_size_per_msg, max_inflight_msgs=self.opts.max_inflight_msgs,
                     snapshot_chunk_size=self.opts.snapshot_chunk_size, pre_vote=True, check_quorum=True,
                     rng=random.Random(os.urandom(8)))
        self.core = RaftCore(cfg, peers=peers, hard_state=hs, snapshot=loaded.snapshot,
                             entries=loaded.entries, applied=applied)
        bound = await self.transport.start()
        self.members[self.id] = Member(bound, self.members[self.id].extra)
        for i, m in self.members.items():
            self.transport.set_peer(i, m.raft)
        self._runner = asyncio.create_task(self._run(), name=f"raft-node-{self.id}")
        self._wake.set()
        return bound

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._tick_loop(), name=f"raft-tick-{self.id}")
                tg.create_task(self._ready_loop(), name=f"raft-ready-{self.id}")
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.fatal = exc
                self.failed.set()
                log.critical("node %d: stopped by a fatal error: %r", self.id, exc)
                self._fail_all(NodeStopped(f"node {self.id} failed: {exc!r}"))
            raise

    async def stop(self, timeout: float = 5.0) -> None:
        """Ordered shutdown: refuse new work, let the ready loop finish its current Ready, stop the
        loops, close the transport, close the storage, and fail whatever is still pending."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ready_loop_done.wait()
            self._runner.cancel()
            # gather, not suppress(CancelledError): a cancellation of stop()'s caller must propagate
            await asyncio.gather(self._runner, return_exceptions=True)
        await self.transport.close()
        self.storage.close()
        self._fail_all(NodeStopped(f"node {self.id} stopped"))

    def _fail_all(self, exc: Exception) -> None:
        for _, fut in self._proposals.values():
            if not fut.done():
                fut.set_exception(exc)
        for fut in self._reads.values():
            if not fut.done():
                fut.set_exception(exc)
        for _, _, fut in self._applied_waiters:
            if not fut.done():
                fut.set_exception(exc)
        self._proposals.clear()
        self._reads.clear()
        self._applied_waiters.clear()

    # -- transport callbacks ---------------------------------------------------------------------------

    def _deliver(self, msg: Message) -> None:
        if msg.frm in self.refused:
            core = self.core
            if core is not None and not self._stopping:
                self.lanes.refuse(msg, core.term, self.ticks)
            return
        self.last_heard[msg.frm] = asyncio.get_running_loop().time()
        if self.core is not None and not self._stopping:
            self.core.step(msg)
            self._wake.set()

    def _unreachable(self, peer: int) -> None:
        if self.core is not None:
            self.core.report_unreachable(peer)

    # -- loops ---------------------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.opts.tick_interval
        deadline = loop.time()
        while True:
            deadline += interval
            now = loop.time()
            if deadline < now - interval:      # we fell behind (a stall): do not burst ticks
                deadline = now
            await asyncio.sleep(max(0.0, deadline - now))
            assert self.core is not None
            self.core.tick()
            self.ticks += 1
            if self.lanes.closing:
                self.lanes.close_due(self.ticks)
            self._wake.set()

    async def _ready_loop(self) -> None:
        core = self.core
        assert core is not None
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                while core.has_ready() and not self._stopping:
                    await self._handle_ready(core, core.ready())
                self._notify_changed()
        finally:
            self._ready_loop_done.set()
            self._notify_changed()

    def _notify_changed(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once `predicate()` holds. It is checked again after every round of work the node
        does (a message stepped, a tick, a Ready handled), so it may read any of the node's state:
        role, leader, commit and match indexes. Raises TimeoutError after `timeout` seconds and
        NodeStopped once the node stops or fails."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._stopping or self.fatal is not None:
                    raise NodeStopped(f"node {self.id} stopped")
                await self._changed.wait()

    async def _handle_ready(self, core: RaftCore, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd)
        for e in rd.entries:
            if e.type == EntryType.CONF_CHANGE:
                self._learn_address(e)      # before sending: the leader may be adding that node
        for m in rd.messages:
            if m.type is MessageType.REMOVED:
                self.lanes.reach(m.to, self.ticks)
        send = self.transport.send
        messages = rd.messages
        if rd.snapshot is not None or rd.entries or rd.hard_state is not None:
            hs = rd.hard_state
            term_vote = (hs.term, hs.vote) if hs is not None else self._synced_term_vote
            if rd.snapshot is not None or rd.entries or term_vote != self._synced_term_vote:
                leader_overlap = (core.role is Role.LEADER and bool(rd.entries)
                                  and term_vote == self._synced_term_vote)
                if leader_overlap:
                    # A leader may replicate its new entries while writing them itself. Safe because
                    # every commit index or applied entry that could count the leader's own not-yet-
                    # durable copy only surfaces in a later Ready, made after this write returns.
                    messages = []
                    for m in rd.messages:
                        if m.type in _OVERLAPPABLE:
                            send(m)
                        else:
                            messages.append(m)
                    self.transport.flush()
                await self.storage.persist(hs, rd.entries, rd.snapshot, allow_inline=not leader_overlap)
                self._synced_term_vote = term_vote
            else:
                # Only the commit index moved: it may be re-learned after a crash, so no fsync wait.
                assert hs is not None
                self.storage.append_unsynced(hs)
        for m in messages:
            send(m)
        if messages:
            self.transport.flush()
        if rd.snapshot is not None:
            self._apply_snapshot(rd.snapshot)
        for e in rd.committed_entries:
            self._apply(e)
        for rs in rd.read_states:
            fut = self._reads.pop(rs.request_ctx, None)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)
        core.advance(rd)
        if rd.snapshot is not None:
            # An installed snapshot covers the old log: checkpoint hard state, drop old segments.
            await self.storage.save_snapshot_async(rd.snapshot)
        applied = core.applied
        waiters = self._applied_waiters
        while waiters and waiters[0][0] <= applied:
            _, _, waiter = heapq.heappop(waiters)
            if not waiter.done():
                waiter.set_result(None)
        if applied - self._last_snapshot_index >= self.opts.snapshot_every:
            await self._take_snapshot(core, applied)

    def _on_soft_state(self, rd: Ready) -> None:
        assert rd.soft_state is not None
        assert self.core is not None
        log.info("node %d: %s, term %d, leader %d", self.id, rd.soft_state.role.value, self.core.term,
                 rd.soft_state.leader)
        if self.opts.on_leader_change is not None:
            self.opts.on_leader_change(rd.soft_state.leader)
        if rd.soft_state.removed != self._reported_removed:
            self._reported_removed = rd.soft_state.removed
            if rd.soft_state.removed:
                log.warning("node %d: this node was removed from the raft cluster (a committed configuration"
                            " excludes it); it no longer campaigns", self.id)
            else:
                log.info("node %d: a member of the raft cluster again", self.id)
        if rd.soft_state.role is not Role.LEADER:
            # Reads routed through a leader we no longer follow will never be answered.
            for fut in self._reads.values():
                if not fut.done():
                    fut.set_exception(NotLeader(rd.soft_state.leader))
            self._reads.clear()

    def _apply(self, e: Entry) -> None:
        result: Any = None
        error: Exception | None = None
        if e.type == EntryType.CONF_CHANGE:
            self._apply_conf_change(e)
            assert self.core is not None
            result = self.core.conf
        elif e.data:
            try:
                result = self.sm.apply(e)
            except Exception as exc:
                # apply is deterministic, so every replica rejects this entry the same way: the
                # state stays consistent and the proposer gets the error.
                log.warning("node %d: state machine rejected entry %d: %r", self.id, e.index, exc)
                error = exc
        pending = self._proposals.pop(e.index, None)
        if pending is not None:
            term, fut = pending
            if fut.done():
                return
            if term == e.term and error is not None:
                fut.set_exception(error)
            elif term == e.term:
                fut.set_result(result)
            else:
                fut.set_exception(ProposalDropped(f"entry {e.index} was replaced by a newer leader"))

    def _apply_snapshot(self, snap: Snapshot) -> None:
        wrapped = _unwrap_snapshot(snap.data)
        for i, m in wrapped.members.items():
            if i != self.id:
                self.members[i] = m
                self.lanes.readmit(i)
                self.transport.set_peer(i, m.raft)
        for i, m in wrapped.retired.items():
            if i not in self.members:
                self.retired[i] = m
        self.sm.restore(wrapped.app)
        self._last_snapshot_index = snap.meta.index
        for index in [i for i in self._proposals if i <= snap.meta.index]:
            _, fut = self._proposals.pop(index)
            if not fut.done():
                fut.set_exception(ProposalDropped(f"entry {index} was superseded by a snapshot; outcome unknown"))

    def _learn_address(self, e: Entry) -> None:
        cc = decode_conf_change(e.data)
        if cc.type != ConfChangeType.REMOVE_NODE and cc.context and cc.node_id != self.id:
            member = Member.decode(cc.context)
            self.members[cc.node_id] = member
            self.lanes.readmit(cc.node_id)          # added back (under the same id)
            if self.core is not None:
                self.transport.set_peer(cc.node_id, member.raft)

    def _apply_conf_change(self, e: Entry) -> None:
        cc = decode_conf_change(e.data)
        if cc.type == ConfChangeType.REMOVE_NODE and cc.node_id != self.id:
            self.lanes.retire(cc.node_id, self.members.pop(cc.node_id, None), self.ticks)
        else:
            self._learn_address(e)

    async def _take_snapshot(self, core: RaftCore, index: int) -> None:
        snap = Snapshot(core.snapshot_meta(index), _wrap_snapshot(self.members, self.sm.snapshot(), self.retired))
        await self.storage.save_snapshot_async(snap)
        core.compact(snap)
        self._last_snapshot_index = index
        log.info("node %d: snapshot at index %d (%d bytes)", self.id, index, len(snap.data))

    # -- client API ----------------------------------------------------------------------------------

    def _live_core(self) -> RaftCore:
        if self._stopping or self.core is None:
            raise NodeStopped(f"node {self.id} is not running")
        if self.fatal is not None:
            raise NodeStopped(f"node {self.id} failed: {self.fatal!r}")
        return self.core

    async def propose(self, data: bytes) -> Any:
        """Replicate `data`; returns the state machine's result once committed and applied here.
        Raises NotLeader(hint) at once on a follower, ProposalDropped if the entry was lost."""
        core = self._live_core()
        index = core.propose(data)
        return await self._track(index, core.term)

    def submit(self, data: bytes) -> asyncio.Future[Any]:
        """`propose` without a coroutine, for callers that serve many requests from callbacks: the
        future resolves exactly as `propose` would. NotLeader, ProposalDropped and NodeStopped are
        raised at once. Cancelling the future abandons the wait, not the entry."""
        core = self._live_core()
        index = core.propose(data)
        return self._register(index, core.term)

    def _register(self, index: int, term: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        superseded = self._proposals.get(index)
        if superseded is not None and not superseded[1].done():
            # Our earlier entry at this index was truncated away while we were not leading.
            superseded[1].set_exception(ProposalDropped(f"entry {index} was replaced by a newer leader"))
        self._proposals[index] = (term, fut)
        self._wake.set()
        return fut

    async def _track(self, index: int, term: int) -> Any:
        fut = self._register(index, term)
        try:
            return await fut
        finally:
            if self._proposals.get(index, (0, None))[1] is fut:
                del self._proposals[index]

    async def read_index(self) -> int:
        """Wait until a read issued now is linearizable here; returns the read index."""
        core = self._live_core()
        ctx = next(self._read_ids).to_bytes(8, "big") + self.id.to_bytes(8, "big")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        core.read_index(ctx)            # raises NotLeader(0) when no leader is known
        self._reads[ctx] = fut
        self._wake.set()
        try:
            index = await fut
        finally:
            self._reads.pop(ctx, None)
        await self.wait_applied(index)
        return index

    async def wait_applied(self, index: int) -> None:
        core = self._live_core()
        if core.applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied_waiters, (index, id(fut), fut))
        await fut

    async def change_membership(self, cc: ConfChange) -> ConfState:
        core = self._live_core()
        index = core.propose_conf_change(cc)
        return await self._track(index, core.term)

    async def add_member(self, node_id: int, member: Member, *, learner: bool = False) -> ConfState:
        kind = ConfChangeType.ADD_LEARNER if learner else ConfChangeType.ADD_VOTER
        return await self.change_membership(ConfChange(kind, node_id, member.encode()))

    async def promote_learner(self, node_id: int) -> ConfState:
        member = self.members.get(node_id)
        ctx = member.encode() if member else b""
        return await self.change_membership(ConfChange(ConfChangeType.ADD_VOTER, node_id, ctx))

    async def remove_member(self, node_id: int) -> ConfState:
        return await self.change_membership(ConfChange(ConfChangeType.REMOVE_NODE, node_id))

    def transfer_leadership(self, to: int) -> None:
        self._live_core().transfer_leadership(to)
        self._wake.set()

    def update_address(self, node_id: int, addr: Address) -> None:
        """Point a member at a new raft address (e.g. it restarted elsewhere); not replicated. For a
        removed member, only the address its REMOVED notices go to changes."""
        if self.lanes.update_address(node_id, addr):
            return
        member = self.members.get(node_id)
        self.members[node_id] = Member(addr, member.extra if member else {})
        if self.core is not None and node_id != self.id:
            self.transport.set_peer(node_id, addr)
