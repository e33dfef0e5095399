"""The leader's side of the Raft core: replication, commitment, snapshots to laggards, ReadIndex,
leadership transfer. `RaftCore` (raft/core.py) inherits it; this module only splits the file.

Theory of operation
-------------------
The leader keeps a `Progress` per member (itself included). Appends go out in batches of at most
`max_size_per_msg` bytes; in REPLICATE state they are pipelined up to `max_inflight_msgs`
unacknowledged messages. Proposals made between two Readies are broadcast together when the
next Ready is built, so each follower gets one batch per Ready rather than one per proposal.

Commit rule: the commit index is the highest index a majority of voters holds, and it only moves
when the entry there is of the current term (Raft §5.4.2, the "Figure 8" case). A leader removed
from the configuration keeps replicating until that removal commits, then steps down (after
handing leadership to an up-to-date voter if one exists). A removed follower likewise keeps getting
appends until its removal commits, and is then sent REMOVED (see raft/core.py, "Removed members").

Reads (ReadIndex) wait until the leader has committed an entry of its term, then record the commit
index and confirm leadership by a heartbeat round (raft/readonly.py).
"""

from __future__ import annotations

from raft.confchange import ConfHistory
from raft.config import Config
from raft.log import RaftLog
from raft.progress import Inflights, Progress, ProgressState
from raft.quorum import committed_index, has_quorum
from raft.readonly import ReadOnly
from raft.types import ConfState, Entry, EntryType, Message, MessageType, ReadState, Role, Snapshot

# Context of a VOTE sent because of TIMEOUT_NOW: voters grant it despite a leader lease.
TRANSFER_CONTEXT = b"\x00transfer"


class LeaderSide:
    cfg: Config
    log: RaftLog
    conf_history: ConfHistory
    snapshot: Snapshot | None
    term: int
    leader: int
    role: Role
    election_elapsed: int
    heartbeat_elapsed: int
    msgs: list[Message]
    read_states: list[ReadState]

    def _become_follower(self, term: int, leader: int) -> None:
        raise NotImplementedError

    def _is_removed_peer(self, peer: int) -> bool:
        raise NotImplementedError

    def _send_removed_notice(self, peer: int) -> None:
        raise NotImplementedError

    @property
    def id(self) -> int:
        return self.cfg.id

    @property
    def conf(self) -> ConfState:
        return self.conf_history.current

    def _send(self, msg: Message) -> None:
        self.msgs.append(msg)

    def _init_leader_state(self) -> None:
        self.prs: dict[int, Progress] = {}
        self.lead_transferee = 0
        self.read_only = ReadOnly()
        self.pending_reads: list[tuple[bytes, int]] = []  # reads waiting for a commit in this term
        self._bcast_pending = False

    # ------------------------------------------------------------------ becoming leader
    def _become_leader(self) -> None:
        # Called on a candidate that won: term and vote are already set by the election.
        self._init_leader_state()
        self.role = Role.LEADER
        self.leader = self.id
        self.heartbeat_elapsed = 0
        self.election_elapsed = 0
        self._sync_progress_with_conf()
        self._append_entry(EntryType.NORMAL, b"")  # commits everything before it once replicated

    def _new_progress(self) -> Progress:
        return Progress(next=self.log.last_index + 1, inflights=Inflights(self.cfg.max_inflight_msgs))

    def _sync_progress_with_conf(self) -> None:
        conf = self.conf
        members = set(conf.voters) | set(conf.learners)
        # A node being removed keeps getting appends until its removal commits, so it learns of
        # the removal (and stops campaigning) instead of being silently cut off.
        committed_conf = self.conf_history.at(max(self.log.committed, self.conf_history.base_index))
        members |= set(committed_conf.voters) | set(committed_conf.learners)
        for peer in list(self.prs):
            if peer not in members:
                del self.prs[peer]
                if peer != self.id and self._is_removed_peer(peer):
                    self._send_removed_notice(peer)  # its removal committed: it hears nothing more
        for peer in members:
            pr = self.prs.get(peer)
            if pr is None:
                pr = self.prs[peer] = self._new_progress()
                if peer == self.id:
                    pr.match = self.log.last_index
                    pr.become_replicate()
            pr.is_learner = peer in conf.learners
            pr.recent_active = pr.recent_active or peer == self.id
        if self.lead_transferee and self.lead_transferee not in conf.voters:
            self.lead_transferee = 0

    def _append_entry(self, kind: EntryType, data: bytes) -> int:
        index = self.log.last_index + 1
        entry = Entry(self.term, index, kind, data)
        self.log.append([entry])
        if kind is EntryType.CONF_CHANGE:
            self.conf_history.on_append([entry])
            self._sync_progress_with_conf()
        own = self.prs.get(self.id)
        if own is not None:
            own.maybe_update(index)
        self._maybe_commit()
        self._bcast_pending = True
        return index

    # ------------------------------------------------------------------ time
    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        retry_after = max(2, self.cfg.election_tick // 2)
        for peer, pr in self.prs.items():
            sender = pr.snapshot_sender
            if sender is not None and sender.in_flight:
                sender.ticks_waiting += 1
                if sender.ticks_waiting >= retry_after:
                    self._send_snapshot_chunk(peer, pr)
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = {p for p, pr in self.prs.items() if pr.recent_active or p == self.id}
                if not has_quorum(self.conf.voters, active):
                    self._become_follower(self.term, 0)
                    return
                for p, pr in self.prs.items():
                    pr.recent_active = p == self.id
            self.lead_transferee = 0  # a transfer that did not finish within an election timeout
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self.read_only.last_pending_ctx())

    # ------------------------------------------------------------------ sending
    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        ents = self.log.slice(pr.next, self.log.last_index + 1, self.cfg.max_size_per_msg)
        if prev_term is None or ents is None:
            return self._start_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        self._send(Message(MessageType.APPEND, to, self.id, self.term, log_term=prev_term, index=prev,
                           entries=tuple(ents), commit=self.log.committed))
        pr.sent_entries(ents[-1].index if ents else prev, len(ents))
        return True

    def _start_snapshot(self, to: int, pr: Progress) -> bool:
        if self.snapshot is None:
            raise RuntimeError(f"node {to} needs compacted entries but no snapshot is held")
        pr.become_snapshot(self.snapshot, self.cfg.snapshot_chunk_size)
        self._send_snapshot_chunk(to, pr)
        return True

    def _send_snapshot_chunk(self, to: int, pr: Progress) -> None:
        sender = pr.snapshot_sender
        assert sender is not None
        offset, chunk, done = sender.next_chunk()
        self._send(Message(MessageType.SNAPSHOT, to, self.id, self.term, snapshot_meta=sender.snapshot.meta,
                           offset=offset, chunk=chunk, done=done))
        sender.in_flight = True
        sender.ticks_waiting = 0

    def _bcast_append(self, send_if_empty: bool = True) -> None:
        self._bcast_pending = False
        for peer, pr in self.prs.items():
            if peer != self.id and self._send_append(peer, send_if_empty):
                while pr.state is ProgressState.REPLICATE and self._send_append(peer, send_if_empty=False):
                    pass

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for peer, pr in self.prs.items():
            if peer != self.id:
                self._send(Message(MessageType.HEARTBEAT, peer, self.id, self.term,
                                   commit=min(pr.match, self.log.committed), context=ctx))

    # ------------------------------------------------------------------ receiving
    def _step_leader(self, msg: Message) -> None:
        t = msg.type
        if t is MessageType.READ_INDEX:
            self._leader_read(msg.context, msg.frm)
            return
        pr = self.prs.get(msg.frm)
        if pr is None:
            return
        if t is MessageType.APPEND_RESP:
            pr.recent_active = True
            self._handle_append_resp(msg, pr)
        elif t is MessageType.HEARTBEAT_RESP:
            pr.recent_active = True
            self._handle_heartbeat_resp(msg, pr)
        elif t is MessageType.SNAPSHOT_RESP:
            pr.recent_active = True
            self._handle_snapshot_resp(msg, pr)

    def _handle_append_resp(self, msg: Message, pr: Progress) -> None:
        peer = msg.frm
        if msg.reject:
            hint = msg.reject_hint
            if msg.log_term > 0:
                hint = self.log.find_conflict_by_term(hint, msg.log_term)
            if pr.maybe_decrement(msg.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(peer)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(msg.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(msg.index)
        if self._maybe_commit():
            if self.role is not Role.LEADER:
                return
            self._bcast_append()
        elif was_paused:
            self._send_append(peer)
        while pr.state is ProgressState.REPLICATE and self._send_append(peer, send_if_empty=False):
            pass
        if peer == self.lead_transferee and pr.match == self.log.last_index:
            self._send(Message(MessageType.TIMEOUT_NOW, peer, self.id, self.term))

    def _handle_heartbeat_resp(self, msg: Message, pr: Progress) -> None:
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.reset()  # unstick a window whose acknowledgements were lost
        if pr.match < self.log.last_index:
            self._send_append(msg.frm)
        if not msg.context:
            return
        acks = self.read_only.recv_ack(msg.frm, msg.context)
        if acks is not None and has_quorum(self.conf.voters, acks):
            for req in self.read_only.confirm(msg.context):
                self._answer_read(req.ctx, req.frm, req.index)

    def _handle_snapshot_resp(self, msg: Message, pr: Progress) -> None:
        sender = pr.snapshot_sender
        if pr.state is not ProgressState.SNAPSHOT or sender is None:
            return
        size = len(sender.snapshot.data)
        if msg.reject:
            sender.acked = min(msg.index, size)
        elif msg.index > sender.acked:
            sender.acked = min(msg.index, size)
        else:
            return  # a duplicate acknowledgement
        self._send_snapshot_chunk(msg.frm, pr)

    # ------------------------------------------------------------------ commitment
    def _maybe_commit(self) -> bool:
        match = {peer: pr.match for peer, pr in self.prs.items()}
        first_in_term = self.log.term(self.log.committed) != self.term
        if not self.log.maybe_commit(committed_index(self.conf.voters, match), self.term):
            return False
        if len(self.prs) > len(self.conf.voters) + len(self.conf.learners):
            self._sync_progress_with_conf()  # a removal committed: stop replicating to the node
        if first_in_term and self.pending_reads:
            pending, self.pending_reads = self.pending_reads, []
            for ctx, frm in pending:
                self._leader_read(ctx, frm)
        if self.id not in self.conf.voters and self.log.committed >= self.conf_history.last_change_index:
            self._step_down_removed()
        return True

    def _step_down_removed(self) -> None:
        """Our own removal committed: hand leadership to an up-to-date voter, then follow."""
        best = max((pr.match, peer) for peer, pr in self.prs.items() if peer in self.conf.voters)
        if best[0] == self.log.last_index:
            self._send(Message(MessageType.TIMEOUT_NOW, best[1], self.id, self.term))
        self._bcast_append()  # tell everyone the commit index before stepping down
        self._become_follower(self.term, 0)

    # ------------------------------------------------------------------ reads and transfer
    def _leader_read(self, ctx: bytes, frm: int) -> None:
        if frm != self.id and frm not in self.prs:
            return
        if self.conf.voters == (self.id,):
            self._answer_read(ctx, frm, self.log.committed)
            return
        if self.log.term(self.log.committed) != self.term:
            self.pending_reads.append((ctx, frm))
            return
        if self.read_only.add_request(self.log.committed, ctx, frm, self.id):
            self._bcast_heartbeat(ctx)

    def _answer_read(self, ctx: bytes, frm: int, index: int) -> None:
        if frm == self.id:
            self.read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(MessageType.READ_INDEX_RESP, frm, self.id, self.term, index=index, context=ctx))

    def _start_transfer(self, to: int) -> None:
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0
        pr = self.prs[to]
        if pr.match == self.log.last_index:
            self._send(Message(MessageType.TIMEOUT_NOW, to, self.id, self.term))
        else:
            self._send_append(to)
