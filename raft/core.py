"""The pure Raft state machine: no I/O, no clocks, no threads. Time is a count of `tick()` calls.

Theory of operation
-------------------
The driver feeds the core peer messages (`step`), time (`tick`) and client requests (`propose`,
`read_index`, ...). The core never performs I/O; it accumulates work and hands it back as a
`Ready`. For each Ready the driver MUST, in this order:

1. persist `snapshot` (if any), then `entries`, then `hard_state` — entries overwrite any stored
   entries at the same or higher indexes — and make them durable (fsync);
2. only then send `messages` (persist-before-send: a vote or an append acknowledgement must never
   reach a peer before the state it promises is durable);
3. apply `snapshot` (if any) and then `committed_entries` to the state machine, and serve the
   `read_states` once the applied index reaches each one's index;
4. call `advance(ready)`. Exactly one Ready is outstanding at a time (`has_ready()` is False
   until it is advanced).

Membership: a change takes effect on a node as soon as its CONF_CHANGE entry is in the node's log
(`conf` is always the latest configuration in the log), so the leader may address a new peer
before the change commits. Drivers learn a peer's address from `ConfChange.context`, decoding
CONF_CHANGE entries of `Ready.entries` with `raft.confchange.decode_conf_change`; a message to a
peer whose address is not known yet can simply be dropped (Raft retries). A brand-new cluster
(`peers=` and empty storage) writes its founding membership as committed entries 1..n at term 1.

Removed members (Raft dissertation §4.2.3): see raft/removal.py.

Safety invariants (checked by tests/sim on every run): at most one leader per term; logs that
agree on (index, term) agree on every earlier entry; a leader holds every committed entry; every
node applies the same entry at each index. The leader only commits entries of its own term by
counting replicas (it appends an empty entry when elected). Membership changes one server at a
time, taking effect when appended (see raft/confchange.py); replication flow control lives in
raft/progress.py and the leader's side of replication in raft/leader.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from raft.confchange import ConfHistory, apply_conf_change, encode_conf_change, is_member
from raft.config import Config
from raft.leader import TRANSFER_CONTEXT, LeaderSide
from raft.log import RaftLog, entry_size
from raft.progress import ProgressState
from raft.quorum import VoteResult, vote_result
from raft.removal import FROM_LEADER, VOTE_REQUESTS, RemovalSide
from raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = ["Config", "RaftCore"]



class RaftCore(RemovalSide, LeaderSide):
    def __init__(
        self,
        config: Config,
        *,
        peers: ConfState | None = None,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        applied: int = 0,
    ) -> None:
        self.cfg = config
        assert config.rng is not None
        self.rng = config.rng
        snap_index = snapshot.meta.index if snapshot else 0
        self.log = RaftLog(snap_index, snapshot.meta.term if snapshot else 0)
        self.conf_history = ConfHistory(snap_index, snapshot.meta.conf if snapshot else ConfState())
        self.snapshot: Snapshot | None = snapshot
        self._init_volatile()
        hs = hard_state or HardState()
        self.term, self.vote = hs.term, hs.vote

        kept = [e for e in entries if e.index > snap_index]
        for n, e in enumerate(kept):
            if e.index != snap_index + 1 + n:
                raise ValueError(f"restart entries are not contiguous after index {snap_index}: got {e.index}")
        self.log.entries = kept
        self.log.stabled = self.log.last_index
        self.conf_history.on_append(kept)
        if hs.commit > self.log.last_index:
            raise ValueError(f"hard state commit {hs.commit} is beyond the last stored index {self.log.last_index}")
        self.log.committed = max(hs.commit, snap_index)
        if applied > self.log.committed:
            raise ValueError(f"applied index {applied} is beyond the commit index {self.log.committed}")
        self.log.applied = max(applied, snap_index)
        self._note_committed([e for e in kept if e.index <= self.log.committed])
        self._prev_hard_state = HardState(self.term, self.vote, self.log.committed)

        brand_new = hard_state is None and snapshot is None and not kept
        if peers is not None and brand_new:
            self._bootstrap(peers)
        self._become_follower(self.term, 0)
        self._prev_soft_state = SoftState(self.leader, self.role)

    def _init_volatile(self) -> None:
        self.term = 0
        self.vote = 0
        self.leader = 0
        self.role = Role.FOLLOWER
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_tick
        self.snapshot_rx: tuple[SnapshotMeta, bytearray] | None = None
        self._ready_outstanding = False
        self._removal_notice: tuple[int, int] | None = None  # (index, term) of a peer's REMOVED
        self._removed_by_log = False        # the last committed change about this node removed it
        self._refused = False               # refused outright by a peer (raft/removal.py)
        self._init_leader_state()

    def _bootstrap(self, peers: ConfState) -> None:
        """A brand-new cluster: the initial membership becomes committed entries 1..n at term 1,
        identical on every founding node, so a restart rebuilds the configuration from the log."""
        if not peers.voters:
            raise ValueError("bootstrap peers need at least one voter")
        if set(peers.voters) & set(peers.learners):
            raise ValueError(f"bootstrap peers list a node as both voter and learner: {peers}")
        changes = [ConfChange(ConfChangeType.ADD_VOTER, v) for v in peers.voters]
        changes += [ConfChange(ConfChangeType.ADD_LEARNER, n) for n in peers.learners]
        ents = [Entry(1, i + 1, EntryType.CONF_CHANGE, encode_conf_change(cc)) for i, cc in enumerate(changes)]
        self.log.append(ents)
        self.conf_history.on_append(ents)
        self.log.committed = len(ents)
        self.term = 1
        self._prev_hard_state = HardState()

    # ------------------------------------------------------------------ properties
    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied(self) -> int:
        return self.log.applied

    def conf_at(self, index: int) -> ConfState:
        """The configuration in force at log index `index` (>= the last snapshot's index)."""
        return self.conf_history.at(index)

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """Metadata for an application snapshot taken at `index` (between the last snapshot and applied)."""
        if index > self.log.applied or index < self.log.snapshot_index:
            raise ValueError(f"snapshot index {index} outside [{self.log.snapshot_index}, {self.log.applied}]")
        term = self.log.term(index)
        assert term is not None
        return SnapshotMeta(index, term, self.conf_history.at(index))

    def _promotable(self) -> bool:
        return self.id in self.conf.voters and not self._barred()

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id, "role": self.role.value, "term": self.term, "leader": self.leader,
            "commit": self.log.committed, "applied": self.log.applied, "last_index": self.log.last_index,
            "snapshot_index": self.log.snapshot_index, "removed": self.removed,
            "conf": {"voters": list(self.conf.voters), "learners": list(self.conf.learners)},
        }
        if self.role is Role.LEADER:
            out["progress"] = {
                peer: {"match": pr.match, "next": pr.next, "state": pr.state.value}
                for peer, pr in sorted(self.prs.items())
            }
            out["transferee"] = self.lead_transferee
        return out

    # ------------------------------------------------------------------ role transitions
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.leader = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        assert self.rng is not None
        self.randomized_election_timeout = self.cfg.election_tick + self.rng.randrange(self.cfg.election_tick)
        self.votes = {}
        self._init_leader_state()

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        # A pre-candidate changes neither its term nor its vote.
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.leader = 0

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.id

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        if not self._promotable():
            return
        if pre_vote:
            self._become_pre_candidate()
            kind, vote_term = MessageType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            kind, vote_term = MessageType.VOTE, self.term
        self.votes[self.id] = True
        if self._tally() is VoteResult.WON:
            return
        for peer in self.conf.voters:
            if peer != self.id:
                self._send(Message(kind, peer, self.id, vote_term, log_term=self.log.last_term,
                                   index=self.log.last_index,
                                   context=TRANSFER_CONTEXT if transfer else b""))

    def _tally(self) -> VoteResult:
        result = vote_result(self.conf.voters, self.votes)
        if result is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self.term, 0)
        return result

    # ------------------------------------------------------------------ time
    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self._promotable() and (self.election_elapsed >= self.randomized_election_timeout
                                   or self.conf.voters == (self.id,)):
            # The only voter waits for nobody: no other node can lead without its vote, and there
            # is no vote to split (a new single-manager swarm, or one forced anew, leads at once)
            self.election_elapsed = 0
            self._campaign(pre_vote=self.cfg.pre_vote)

    # ------------------------------------------------------------------ messages
    def step(self, msg: Message) -> None:
        """Feed one message from a peer. Stale, misaddressed and unknown messages are dropped."""
        if msg.to != self.id or msg.frm == self.id or msg.term <= 0:
            return
        if msg.type is MessageType.REMOVED:
            self._handle_removed_notice(msg)
            return
        if self._refused and msg.type in VOTE_REQUESTS:
            return      # our configuration is dead: no quorum may be made with us
        if self._is_removed_peer(msg.frm) and not self._heeds_removed_peer(msg):
            self._send_removed_notice(msg.frm)
            return
        if msg.term > self.term:
            if msg.type in VOTE_REQUESTS:
                in_lease = (self.cfg.check_quorum and self.leader != 0
                            and self.election_elapsed < self.cfg.election_tick)
                if in_lease and msg.context != TRANSFER_CONTEXT:
                    return  # we heard from a live leader recently: do not let a rejoining node disrupt it
            if msg.type is MessageType.PRE_VOTE or (msg.type is MessageType.PRE_VOTE_RESP and not msg.reject):
                pass  # pre-votes never change terms
            elif msg.type in FROM_LEADER:
                self._become_follower(msg.term, msg.frm)
            else:
                self._become_follower(msg.term, 0)
        elif msg.term < self.term:
            if msg.type in (MessageType.APPEND, MessageType.HEARTBEAT):
                # A stale leader (e.g. healed from a partition) learns the new term from this. (etcd
                # answers only with check-quorum or pre-vote, counting on our own vote requests to
                # carry our term otherwise; but a removed node's requests are answered with REMOVED
                # instead, and a node added back after raising its term must be able to say so.)
                self._send(Message(MessageType.APPEND_RESP, msg.frm, self.id, self.term))
            elif msg.type is MessageType.PRE_VOTE:
                self._send(Message(MessageType.PRE_VOTE_RESP, msg.frm, self.id, self.term, reject=True))
            return

        if msg.type in VOTE_REQUESTS:
            self._handle_vote_request(msg)
        elif self.role is Role.LEADER:
            self._step_leader(msg)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(msg)
        else:
            self._step_follower(msg)

    def _handle_vote_request(self, msg: Message) -> None:
        resp = MessageType.PRE_VOTE_RESP if msg.type is MessageType.PRE_VOTE else MessageType.VOTE_RESP
        can_vote = (
            self.vote == msg.frm
            or (self.vote == 0 and self.leader == 0)
            or (msg.type is MessageType.PRE_VOTE and msg.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(msg.index, msg.log_term):
            self._send(Message(resp, msg.frm, self.id, msg.term))
            if msg.type is MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = msg.frm
        else:
            self._send(Message(resp, msg.frm, self.id, self.term, reject=True))

    def _step_candidate(self, msg: Message) -> None:
        if msg.type in FROM_LEADER:
            self._become_follower(msg.term, msg.frm)
            self._step_follower(msg)
            return
        if self.role is Role.PRE_CANDIDATE and msg.type is MessageType.PRE_VOTE_RESP:
            if msg.reject or msg.term == self.term + 1:
                self.votes.setdefault(msg.frm, not msg.reject)
                self._tally()
        elif self.role is Role.CANDIDATE and msg.type is MessageType.VOTE_RESP:
            self.votes.setdefault(msg.frm, not msg.reject)
            self._tally()

    def _step_follower(self, msg: Message) -> None:
        t = msg.type
        if t in FROM_LEADER:
            self.election_elapsed = 0
            self.leader = msg.frm
            if t is MessageType.APPEND:
                self._handle_append(msg)
            elif t is MessageType.HEARTBEAT:
                self.log.commit_to(min(msg.commit, self.log.last_index))
                self._send(Message(MessageType.HEARTBEAT_RESP, msg.frm, self.id, self.term, context=msg.context))
            else:
                self._handle_snapshot_chunk(msg)
        elif t is MessageType.TIMEOUT_NOW:
            self._campaign(pre_vote=False, transfer=True)
        elif t is MessageType.READ_INDEX_RESP:
            self.read_states.append(ReadState(msg.index, msg.context))

    def _handle_append(self, msg: Message) -> None:
        if msg.index < self.log.committed:
            self._send(Message(MessageType.APPEND_RESP, msg.frm, self.id, self.term, index=self.log.committed))
            return
        result = self.log.maybe_append(msg.index, msg.log_term, msg.commit, msg.entries)
        if result is not None:
            last_new, rewritten = result
            if rewritten:
                self.conf_history.truncate_from(rewritten)
                self.conf_history.on_append(self.log.slice(rewritten, self.log.last_index + 1) or [])
                self._retract_acks_from(rewritten)
            self._send(Message(MessageType.APPEND_RESP, msg.frm, self.id, self.term, index=last_new))
            return
        hint = self.log.find_conflict_by_term(min(msg.index, self.log.last_index), msg.log_term)
        self._send(Message(MessageType.APPEND_RESP, msg.frm, self.id, self.term, index=msg.index, reject=True,
                           reject_hint=hint, log_term=self.log.term(hint) or 0))

    def _handle_snapshot_chunk(self, msg: Message) -> None:
        meta = msg.snapshot_meta
        if meta is None:
            return
        if meta.index <= self.log.committed:
            # Already have it (e.g. a retransmitted last chunk): report where we are.
            self.snapshot_rx = None
            self._send(Message(MessageType.APPEND_RESP, msg.frm, self.id, self.term, index=self.log.committed))
            return
        if msg.offset == 0:
            self.snapshot_rx = (meta, bytearray())
        rx = self.snapshot_rx
        if rx is None or rx[0] != meta:
            self._send(Message(MessageType.SNAPSHOT_RESP, msg.frm, self.id, self.term, index=0, reject=True))
            return
        buf = rx[1]
        if msg.offset != len(buf):
            if msg.offset > len(buf):  # a gap: ask the leader to resume from what we hold
                self._send(Message(MessageType.SNAPSHOT_RESP, msg.frm, self.id, self.term, index=len(buf),
                                   reject=True))
            return  # an older duplicate: ignore
        buf += msg.chunk
        if not msg.done:
            self._send(Message(MessageType.SNAPSHOT_RESP, msg.frm, self.id, self.term, index=len(buf)))
            return
        self.snapshot_rx = None
        self._restore(Snapshot(meta, bytes(buf)))
        self._send(Message(MessageType.APPEND_RESP, msg.frm, self.id, self.term, index=self.log.last_index))

    def _retract_acks_from(self, index: int) -> None:
        """Our log from `index` on was just replaced (a newer leader's entries or snapshot): unsent
        acknowledgements of entries there, to an older leader, would claim entries we no longer hold
        and will never persist. Drop them, as the network might have."""
        self.msgs = [m for m in self.msgs
                     if not (m.type is MessageType.APPEND_RESP and not m.reject and m.index >= index)]

    def _restore(self, snap: Snapshot) -> None:
        meta = snap.meta
        if self.log.match_term(meta.index, meta.term):
            self.log.commit_to(meta.index)  # our log already holds it: just fast-forward the commit
            return
        self.log.restore(snap)
        self.conf_history.reset(meta.index, meta.conf)
        self.snapshot = snap
        self._retract_acks_from(meta.index + 1)
        if is_member(meta.conf, self.id):
            self._removed_by_log = False

    # ------------------------------------------------------------------ client API
    def propose(self, data: bytes) -> int:
        """Append `data` to the log if we lead; returns its index. Not yet committed."""
        self._check_can_propose()
        if self.cfg.max_uncommitted_size and self._uncommitted_size() + len(data) > self.cfg.max_uncommitted_size:
            if self.log.last_index > self.log.committed:
                raise ProposalDropped("too many uncommitted bytes; retry later")
        return self._append_entry(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose a one-server membership change; raises ConfChangeError (a ValueError) if invalid."""
        self._check_can_propose()
        if self.conf_history.last_change_index > self.log.committed:
            raise ProposalDropped("another membership change is not yet committed")
        if self.log.term(self.log.committed) != self.term:
            raise ProposalDropped("the new leader has not yet committed an entry of its term")
        apply_conf_change(self.conf, cc)  # validates
        return self._append_entry(EntryType.CONF_CHANGE, encode_conf_change(cc))

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee:
            raise ProposalDropped(f"leadership is being transferred to node {self.lead_transferee}")
        if self.id not in self.conf.voters:
            raise ProposalDropped("this leader is being removed from the cluster")

    def _uncommitted_size(self) -> int:
        ents = self.log.slice(self.log.committed + 1, self.log.last_index + 1) or []
        return sum(entry_size(e) for e in ents)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; the answer arrives as a ReadState tagged `ctx`."""
        if self.role is Role.LEADER:
            self._leader_read(ctx, self.id)
        elif self.leader:
            self._send(Message(MessageType.READ_INDEX, self.leader, self.id, self.term, context=ctx))
        else:
            raise NotLeader(0)

    def transfer_leadership(self, to: int) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id:
            return
        if to not in self.conf.voters:
            raise ValueError(f"cannot transfer leadership to node {to}: not a voter")
        self._start_transfer(to)

    def report_unreachable(self, peer: int) -> None:
        pr = self.prs.get(peer) if self.role is Role.LEADER else None
        if pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot_failed(self, peer: int) -> None:
        pr = self.prs.get(peer) if self.role is Role.LEADER else None
        if pr is not None and pr.state is ProgressState.SNAPSHOT:
            pr.pending_snapshot = 0
            pr.become_probe()

    def compact(self, snapshot: Snapshot) -> None:
        """The application saved `snapshot` (at an applied index): keep it for lagging followers and
        drop the log up to it. Older or equal snapshots are ignored."""
        meta = snapshot.meta
        if meta.index <= self.log.snapshot_index:
            return
        if meta.index > self.log.applied:
            raise ValueError(f"cannot compact to {meta.index}: only applied up to {self.log.applied}")
        if self.log.term(meta.index) != meta.term:
            raise ValueError(f"snapshot term {meta.term} does not match log term {self.log.term(meta.index)}"
                             f" at index {meta.index}")
        if self.conf_history.at(meta.index) != meta.conf:
            raise ValueError(f"snapshot conf {meta.conf} differs from the conf at index {meta.index}:"
                             f" {self.conf_history.at(meta.index)}; use snapshot_meta()")
        self.log.compact(meta.index, meta.term)
        self.conf_history.compact(meta.index)
        self.snapshot = snapshot

    # ------------------------------------------------------------------ Ready
    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role, self.removed)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def has_ready(self) -> bool:
        if self._ready_outstanding:
            return False
        return bool(
            self.msgs or self.read_states or self._bcast_pending
            or self.log.stabled < self.log.last_index
            or self.log.pending_snapshot is not None
            or self.log.has_next_committed()
            or self._soft_state() != self._prev_soft_state
            or self._hard_state() != self._prev_hard_state
        )

    def ready(self) -> Ready:
        if self._ready_outstanding:
            raise RuntimeError("ready() called again before advance() of the previous Ready")
        if self._bcast_pending:
            self._bcast_append(send_if_empty=False)
        rd = Ready(
            entries=self.log.unstable_entries(),
            snapshot=self.log.pending_snapshot,
            committed_entries=self.log.next_committed_entries(),
            messages=self.msgs,
            read_states=self.read_states,
        )
        self._note_committed(rd.committed_entries)
        soft, hard = self._soft_state(), self._hard_state()
        if soft != self._prev_soft_state:
            rd.soft_state = soft
        if hard != self._prev_hard_state:
            rd.hard_state = hard
        self.msgs, self.read_states = [], []
        self._ready_outstanding = True
        return rd

    def advance(self, ready: Ready) -> None:
        if not self._ready_outstanding:
            raise RuntimeError("advance() without an outstanding Ready")
        self._ready_outstanding = False
        if self._removal_notice is not None and not self._notice_active():
            self._removal_notice = None     # our log caught up past it: our own configuration decides
        if ready.soft_state is not None:
            self._prev_soft_state = ready.soft_state
        if ready.hard_state is not None:
            self._prev_hard_state = ready.hard_state
        if ready.entries:
            last = ready.entries[-1]
            self.log.stable_to(last.index, last.term)
        if ready.snapshot is not None:
            self.log.snapshot_applied(ready.snapshot)
        if ready.committed_entries:
            self.log.applied_to(max(self.log.applied, ready.committed_entries[-1].index))
