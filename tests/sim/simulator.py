"""Deterministic simulation of a Raft cluster running a key-value store, under seeded faults.

Theory of operation
-------------------
Everything runs in one process on virtual time: one tick of every live node per simulated tick,
and a network that holds each message until its delivery tick. One `random.Random(seed)` drives
every fault and client choice, so a seed replays exactly.

Faults: per-message drop, duplication and delay (delays reorder); symmetric and asymmetric
partitions; crashes at three points of the Ready cycle — before persisting (the whole Ready is
lost, or a torn prefix of its entries survives without its hard state), after persisting but
before sending, or between Readies — and restarts from exactly what `MemStorage` kept; membership
changes (add learner, promote, remove voter, possibly the leader) during all of that; snapshots and
compaction on every node, sent in small chunks.

Checks while running: at most one leader per term (election safety); a new leader holds every
entry known committed (leader completeness); every node applies the same entry at each index
(state machine safety); logs that agree on an (index, term) agree before it (log matching); a node
that knows it was removed never leads. At the end the faults stop, the cluster must recover and then
stay quiet (see `settle_and_verify` for exactly what is required of whom), and the clients' history
must be linearizable (tests/sim/linearizability.py).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import random
from dataclasses import dataclass, field

from raft.confchange import ConfChangeError
from raft.config import Config
from raft.core import RaftCore
from raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    Ready,
    Role,
    Snapshot,
)
from tests.sim.linearizability import Op, check_history
from tests.sim.memnet import MemStorage

FOUNDERS = (1, 2, 3, 4, 5)
SPARES = (6, 7)
KEYS = ("a", "b", "c", "d")


class SafetyViolation(AssertionError):
    pass


@dataclass
class ClientOp:
    client: int
    kind: str
    key: str
    value: str | None
    call: int
    node: int
    deadline: int
    index: int = 0          # put: the log index of the proposal; get: the read index once known
    ctx: bytes = b""


@dataclass
class SimNode:
    id: int
    storage: MemStorage = field(default_factory=MemStorage)
    core: RaftCore | None = None
    kv: dict[str, str] = field(default_factory=dict)
    crash_at_ready: str = ""          # "", "before_persist", "torn", "after_persist"


@dataclass
class FaultProfile:
    drop: float
    duplicate: float
    max_delay: int
    crash_every: int        # mean ticks between crashes (0: none)
    partition_every: int
    conf_every: int
    snapshot_every: int     # applied entries between snapshots on each node
    transfer_every: int     # mean ticks between leadership transfers (0: none)
    pre_vote: bool
    check_quorum: bool

    @classmethod
    def random(cls, rng: random.Random) -> FaultProfile:
        return cls(
            drop=rng.choice([0.0, 0.02, 0.05, 0.1]),
            duplicate=rng.choice([0.0, 0.02, 0.05]),
            max_delay=rng.choice([0, 1, 2, 4]),
            crash_every=rng.choice([0, 60, 120]),
            partition_every=rng.choice([0, 80, 150]),
            conf_every=rng.choice([60, 120]),
            snapshot_every=rng.choice([8, 20, 40]),
            transfer_every=rng.choice([0, 100]),
            pre_vote=rng.random() < 0.8,
            check_quorum=rng.random() < 0.8,
        )


class Simulation:
    def __init__(self, seed: int, ticks: int = 700, clients: int = 4) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = FaultProfile.random(self.rng)
        self.ticks = ticks
        self.now = 0
        self.clock = 0                    # event counter for the client history
        self.seq = 0
        self.nodes: dict[int, SimNode] = {n: SimNode(n) for n in (*FOUNDERS, *SPARES)}
        self.down: dict[int, int] = {}    # crashed node -> restart tick
        self.inflight: list[tuple[int, float, int, Message]] = []
        self.blocked: set[tuple[int, int]] = set()
        self.heal_at = 0
        self.faults_on = True
        # After recovery: the members of the settled configuration, and the outsiders heard by them.
        self.settled_members: set[int] = set()
        self.outsiders_heard: set[int] = set()
        # checks
        self.leader_of_term: dict[int, int] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.completeness_checked: set[tuple[int, int]] = set()
        # clients
        self.n_clients = clients
        self.client_busy: dict[int, ClientOp | None] = dict.fromkeys(range(clients))
        self.client_hint: dict[int, int] = dict.fromkeys(range(clients), 0)
        self.history: list[Op] = []
        self.write_seq = 0
        self.stats = {"puts_ok": 0, "puts_unknown": 0, "gets_ok": 0, "crashes": 0, "snapshots_installed": 0,
                      "conf_changes": 0, "partitions": 0, "terms": 0}
        for n in self.nodes:
            self._start(n)

    # ------------------------------------------------------------------ node lifecycle
    def _start(self, nid: int) -> None:
        node = self.nodes[nid]
        cfg = Config(id=nid, election_tick=10, heartbeat_tick=1, max_size_per_msg=256, max_inflight_msgs=4,
                     snapshot_chunk_size=48, pre_vote=self.faults.pre_vote,
                     check_quorum=self.faults.check_quorum, rng=random.Random(self.seed * 1000 + nid + 100 * self.now))
        args = node.storage.restart_args()
        snap = node.storage.snapshot
        node.kv = json.loads(snap.data) if snap is not None else {}
        peers = ConfState(FOUNDERS) if nid in FOUNDERS else None
        node.core = RaftCore(cfg, peers=peers, applied=snap.meta.index if snap else 0, **args)
        node.crash_at_ready = ""
        self.down.pop(nid, None)
        self._process(node)

    def _crash(self, node: SimNode) -> None:
        node.core = None
        node.kv = {}
        quick = self.rng.random() < 0.5  # a process restart, or a longer outage
        self.down[node.id] = self.now + (self.rng.randint(1, 3) if quick else self.rng.randint(5, 60))
        self.stats["crashes"] += 1
        for c, op in self.client_busy.items():
            if op is not None and op.node == node.id:
                self._finish_unknown(c, op)

    # ------------------------------------------------------------------ the driver loop of one node
    def _process(self, node: SimNode) -> None:
        while node.core is not None and node.core.has_ready():
            core = node.core
            rd = core.ready()
            # An armed crash strikes at the next Ready that has something to persist.
            durable = rd.entries or rd.hard_state is not None or rd.snapshot is not None
            mode = node.crash_at_ready if durable else ""
            if mode in ("before_persist", "torn"):
                if mode == "torn" and (rd.entries or rd.snapshot):
                    keep_snap = rd.snapshot is not None and self.rng.random() < 0.5
                    cut = self.rng.randint(0, max(0, len(rd.entries) - 1))
                    if rd.snapshot is None or keep_snap:
                        torn = Ready(snapshot=rd.snapshot if keep_snap else None, entries=rd.entries)
                        node.storage.persist(torn, entry_limit=cut, hard_state=False)
                self._crash(node)
                return
            node.storage.persist(rd)
            self._check_durable_before_send(node, rd)
            if mode == "after_persist":
                self._crash(node)
                return
            for m in rd.messages:
                self._send(m)
            self._apply(node, rd)
            core.advance(rd)
            self._check_leader(node)
            self._maybe_snapshot(node)

    def _check_durable_before_send(self, node: SimNode, rd: Ready) -> None:
        """Everything a message promises must already be on this node's disk once its Ready is persisted."""
        st = node.storage
        hs = st.hard_state
        durable_terms = {e.index: e.term for e in st.entries}
        if st.snapshot is not None:
            durable_terms[st.snapshot.meta.index] = st.snapshot.meta.term
        for m in rd.messages:
            if m.type in (MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESP):
                continue  # pre-votes promise nothing and may carry a future term
            if hs is None or hs.term < m.term:
                raise SafetyViolation(f"node {node.id} sends {m.type.name} at term {m.term} with durable term"
                                      f" {hs.term if hs else None}")
            # A granted vote is durable if the disk holds it, or holds a later term (which rules out
            # voting again in m.term).
            if m.type is MessageType.VOTE_RESP and not m.reject and hs.term == m.term and hs.vote != m.to:
                raise SafetyViolation(f"node {node.id} grants its vote to {m.to} in term {m.term} before the"
                                      f" vote is durable (durable vote: {hs.vote})")
            if m.type is MessageType.APPEND_RESP and not m.reject and m.index:
                snap_index = st.snapshot.meta.index if st.snapshot else 0
                last = max([snap_index, *durable_terms])
                if m.index > last or (m.index > snap_index and m.index not in durable_terms):
                    raise SafetyViolation(f"node {node.id} acknowledges index {m.index} but only {last} is durable")

    def _apply(self, node: SimNode, rd: Ready) -> None:
        assert node.core is not None
        if rd.snapshot is not None:
            node.kv = json.loads(rd.snapshot.data)
            self.stats["snapshots_installed"] += 1
        for e in rd.committed_entries:
            seen = self.committed.setdefault(e.index, (e.term, e.data))
            if seen != (e.term, e.data):
                raise SafetyViolation(f"state machine safety: node {node.id} applied {(e.term, e.data)!r} at"
                                      f" index {e.index}, another node applied {seen!r}")
            op_id = ""
            if e.type is EntryType.CONF_CHANGE and node.core.role is Role.LEADER:
                self.stats["conf_changes"] += 1
            if e.type is EntryType.NORMAL and e.data:
                _, op_id, key, value = e.data.decode().split("|")
                node.kv[key] = value
            for c, op in self.client_busy.items():
                if op is not None and op.kind == "put" and op.node == node.id and op.index == e.index:
                    if op_id == op.ctx.decode():
                        self._finish(c, op, op.value)
                    else:
                        self.client_busy[c] = None      # our entry was overwritten: it never happened
        for rs in rd.read_states:
            for op in self.client_busy.values():
                if op is not None and op.kind == "get" and op.ctx == rs.request_ctx and op.node == node.id:
                    op.index = rs.index
        applied = max(node.core.applied, rd.snapshot.meta.index if rd.snapshot else 0,
                      rd.committed_entries[-1].index if rd.committed_entries else 0)
        for c, op in self.client_busy.items():
            if op is not None and op.kind == "get" and op.node == node.id and 0 < op.index <= applied:
                self._finish(c, op, node.kv.get(op.key))

    def _maybe_snapshot(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        if core.applied - core.log.snapshot_index >= self.faults.snapshot_every and core.log.pending_snapshot is None:
            snap = Snapshot(core.snapshot_meta(core.applied), json.dumps(node.kv, sort_keys=True).encode())
            node.storage.compact(snap)
            core.compact(snap)

    # ------------------------------------------------------------------ network
    def _send(self, m: Message) -> None:
        if self.faults_on and self.rng.random() < self.faults.drop:
            return
        copies = 2 if self.faults_on and self.rng.random() < self.faults.duplicate else 1
        for copy in range(copies):
            delay = self.rng.randint(0, self.faults.max_delay) if self.faults_on else 0
            self.seq += 1
            heapq.heappush(self.inflight, (self.now + delay, self.rng.random(), self.seq,
                                           dataclasses.replace(m) if copy else m))

    def _deliver_due(self) -> None:
        for _ in range(50):
            batch = []
            while self.inflight and self.inflight[0][0] <= self.now:
                batch.append(heapq.heappop(self.inflight)[3])
            if not batch:
                return
            touched = set()
            for m in batch:
                node = self.nodes.get(m.to)
                if node is None or node.core is None or (m.frm, m.to) in self.blocked:
                    continue
                if m.to in self.settled_members and m.frm not in self.settled_members:
                    self.outsiders_heard.add(m.frm)
                node.core.step(m)
                touched.add(m.to)
                self._check_leader(node)
            for nid in sorted(touched):
                self._process(self.nodes[nid])

    # ------------------------------------------------------------------ safety checks
    def _check_leader(self, node: SimNode) -> None:
        core = node.core
        if core is None or core.role is not Role.LEADER:
            return
        if core.removed:
            raise SafetyViolation(f"node {node.id} leads term {core.term} though it knows it was removed")
        first = self.leader_of_term.setdefault(core.term, node.id)
        self.stats["terms"] = len(self.leader_of_term)
        if first != node.id:
            raise SafetyViolation(f"election safety: nodes {first} and {node.id} both led term {core.term}")
        if (node.id, core.term) not in self.completeness_checked:
            self.completeness_checked.add((node.id, core.term))
            for index, (term, _) in self.committed.items():
                if index > core.log.snapshot_index and core.log.term(index) != term:
                    raise SafetyViolation(f"leader completeness: leader {node.id} of term {core.term} has term"
                                          f" {core.log.term(index)} at committed index {index} (want {term})")

    def check_logs(self) -> None:
        live = [n for n in self.nodes.values() if n.core is not None]
        for node in live:
            log = node.core.log  # type: ignore[union-attr]
            for e in log.entries:
                if e.index <= log.committed and e.index in self.committed:
                    if self.committed[e.index] != (e.term, e.data):
                        raise SafetyViolation(f"node {node.id} holds {(e.term, e.data)!r} at committed index"
                                              f" {e.index}, applied elsewhere: {self.committed[e.index]!r}")
        for i, a in enumerate(live):
            for b in live[i + 1 :]:
                la, lb = a.core.log, b.core.log  # type: ignore[union-attr]
                lo = max(la.first_index, lb.first_index)
                hi = min(la.last_index, lb.last_index)
                top = next((j for j in range(hi, lo - 1, -1) if la.term(j) == lb.term(j)), 0)
                for j in range(lo, top + 1):
                    if la.entry(j) != lb.entry(j):
                        raise SafetyViolation(f"log matching: nodes {a.id} and {b.id} agree at index {top} but"
                                              f" differ at {j}: {la.entry(j)} vs {lb.entry(j)}")

    # ------------------------------------------------------------------ clients
    def _finish(self, c: int, op: ClientOp, value: str | None) -> None:
        self.clock += 1
        self.history.append(Op(c, op.key, op.kind, value, op.call, self.clock))
        self.stats["puts_ok" if op.kind == "put" else "gets_ok"] += 1
        self.client_busy[c] = None

    def _finish_unknown(self, c: int, op: ClientOp) -> None:
        if op.kind == "put" and op.index:
            self.history.append(Op(c, op.key, "put", op.value, op.call, None))
            self.stats["puts_unknown"] += 1
        self.client_busy[c] = None

    def _client_step(self) -> None:
        for c, op in self.client_busy.items():
            if op is not None and self.now >= op.deadline:
                self._finish_unknown(c, op)
        for c, op in self.client_busy.items():
            if op is not None or self.rng.random() < 0.5:
                continue
            live = [n for n in self.nodes.values() if n.core is not None]
            hint = self.client_hint[c]
            target = self.nodes[hint] if hint in self.nodes and self.nodes[hint].core else self.rng.choice(live)
            core = target.core
            assert core is not None
            key = self.rng.choice(KEYS)
            self.clock += 1
            try:
                if self.rng.random() < 0.6:
                    self.write_seq += 1
                    value = f"c{c}w{self.write_seq}"
                    ctx = f"op{self.write_seq}".encode()
                    new = ClientOp(c, "put", key, value, self.clock, target.id, self.now + 40, ctx=ctx)
                    new.index = core.propose(f"put|{ctx.decode()}|{key}|{value}".encode())
                else:
                    self.write_seq += 1
                    ctx = f"read{self.write_seq}".encode()
                    new = ClientOp(c, "get", key, None, self.clock, target.id, self.now + 40, ctx=ctx)
                    core.read_index(ctx)
            except NotLeader as e:
                self.client_hint[c] = e.leader or self.rng.choice(live).id
                continue
            except ProposalDropped:
                self.client_hint[c] = 0
                continue
            self.client_busy[c] = new
            self._process(target)

    # ------------------------------------------------------------------ fault schedule
    def _faults_step(self) -> None:
        for nid, when in list(self.down.items()):
            if when <= self.now:
                self._start(nid)
        if not self.faults_on:
            return
        rng, f = self.rng, self.faults
        if self.blocked and self.now >= self.heal_at:
            self.blocked.clear()
        leader = self._leader()
        if f.partition_every and not self.blocked and rng.random() < 1 / f.partition_every:
            ids = list(self.nodes)
            kind = rng.choice(["split", "isolate", "isolate_leader", "asymmetric"])
            if kind == "isolate_leader":
                kind = "isolate" if leader is None else "isolate_leader"
            if kind == "split":
                side = set(rng.sample(ids, rng.randint(1, len(ids) // 2)))
                self.blocked = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
            elif kind in ("isolate", "isolate_leader"):
                victim = leader.id if kind == "isolate_leader" and leader else rng.choice(ids)
                self.blocked = {(victim, b) for b in ids} | {(b, victim) for b in ids}
            else:  # one-way: the victim can send but not receive (or the reverse)
                victim = rng.choice(ids)
                outbound = rng.random() < 0.5
                self.blocked = {(victim, b) if outbound else (b, victim) for b in ids if b != victim}
            self.heal_at = self.now + rng.randint(20, 100)
            self.stats["partitions"] += 1
        if f.crash_every and rng.random() < 1 / f.crash_every:
            live = [n for n in self.nodes.values() if n.core is not None]
            if len(self.down) < 2 and live:
                crashing = leader if leader is not None and rng.random() < 0.5 else rng.choice(live)
                mode = rng.choice(["before_persist", "torn", "after_persist", "now"])
                if mode == "now":
                    self._crash(crashing)
                else:
                    crashing.crash_at_ready = mode
        if rng.random() < 1 / f.conf_every:
            self._change_membership()
        if f.transfer_every and leader is not None and leader.core and rng.random() < 1 / f.transfer_every:
            target = rng.choice([*leader.core.conf.voters])
            leader.core.transfer_leadership(target)
            self._process(leader)

    def _leader(self) -> SimNode | None:
        leaders = [n for n in self.nodes.values() if n.core is not None and n.core.role is Role.LEADER]
        return max(leaders, key=lambda n: n.core.term) if leaders else None  # type: ignore[union-attr]

    def _change_membership(self) -> None:
        leader = self._leader()
        if leader is None or leader.core is None:
            return
        core = leader.core
        conf = core.conf
        outsiders = [n for n in self.nodes if n not in conf.voters and n not in conf.learners]
        choices: list[ConfChange] = []
        if outsiders:
            choices.append(ConfChange(ConfChangeType.ADD_LEARNER, self.rng.choice(outsiders)))
        if conf.learners:
            choices.append(ConfChange(ConfChangeType.ADD_VOTER, self.rng.choice(conf.learners)))
        if len(conf.voters) > 3:
            choices.append(ConfChange(ConfChangeType.REMOVE_NODE, self.rng.choice(conf.voters)))
        if not choices:
            return
        try:
            core.propose_conf_change(self.rng.choice(choices))
        except (ProposalDropped, ConfChangeError, NotLeader):
            return
        self._process(self.nodes[core.id])

    # ------------------------------------------------------------------ run
    def tick_once(self) -> None:
        self.now += 1
        self._faults_step()
        self._client_step()
        self._deliver_due()
        for node in self.nodes.values():
            if node.core is not None:
                node.core.tick()
                self._process(node)
        if self.now % 25 == 0:
            self.check_logs()

    def run(self) -> None:
        for _ in range(self.ticks):
            self.tick_once()
        self.settle_and_verify()

    # Ticks of calm required after recovery: two maximal election timeouts (election_tick is 10).
    QUIET_TICKS = 40

    def settle_and_verify(self) -> None:
        """Stop the faults, restart everyone, and require the cluster to recover, agree and stay calm.

        What is required, and of whom, is exactly what Raft (with shoal's removed-member notice)
        promises once the network is reliable and every node is up:

        - Recovery: within 150 ticks there is exactly one leader, it has committed an entry of its
          term and has no leadership transfer under way, and every member of its configuration
          (voter or learner) has applied its whole log and is not campaigning.
          Nothing is required of the other nodes' logs: a node removed while cut off is never sent
          the entries after its removal (Raft §4.2.3), and nodes never added hold nothing.
        - Calm: for QUIET_TICKS more ticks that leader keeps leading the same term, so no member
          sees an election, whether started by a member or by a removed node. (A transfer asked for
          before the faults stopped is an election the application wanted: recovery waits it out.)
        - Removed nodes learn they are out: every outsider (a node outside the leader's
          configuration) whose messages reached a member during the calm reports `removed`; an
          outsider that never contacts a member cannot be told, and Raft does not promise it anything
          (it cannot disturb the members either).
        """
        self.faults_on = False
        self.blocked.clear()
        for node in self.nodes.values():
            node.crash_at_ready = ""
        for nid in list(self.down):
            self.down[nid] = self.now
        for _ in range(150):
            self.tick_once()
            if self._converged():
                break
        else:
            raise SafetyViolation(f"no recovery within 150 fault-free ticks: {self._summary()}")
        self._verify_calm()
        for c, op in self.client_busy.items():
            if op is not None:
                self._finish_unknown(c, op)
        self.check_logs()
        result = check_history(self.history)
        if not result.ok:
            raise SafetyViolation(result.describe())

    def _verify_calm(self) -> None:
        leader = self._leader()
        assert leader is not None and leader.core is not None
        term, conf = leader.core.term, leader.core.conf
        self.settled_members = set(conf.voters) | set(conf.learners)
        self.outsiders_heard = set()
        for _ in range(self.QUIET_TICKS):
            self.tick_once()
            leaders = [n.id for n in self.nodes.values() if n.core is not None and n.core.role is Role.LEADER]
            if leaders != [leader.id] or leader.core.term != term:
                raise SafetyViolation(f"after recovery under leader {leader.id} of term {term}, at tick {self.now}"
                                      f" the leaders are {leaders}: {self._summary()}")
        for nid in sorted(self.outsiders_heard):
            core = self.nodes[nid].core
            if core is not None and not core.removed:
                raise SafetyViolation(f"node {nid}, outside the configuration {conf}, was heard by its members but"
                                      f" does not know it was removed: {self._summary()}")
        self.settled_members = set()

    def _converged(self) -> bool:
        leaders = [n.core for n in self.nodes.values() if n.core is not None and n.core.role is Role.LEADER]
        if len(leaders) != 1:
            return False
        leader = leaders[0]
        if leader.log.term(leader.commit_index) != leader.term:
            return False
        # A leadership transfer asked for before the faults stopped may still hand over: not yet settled.
        if leader.lead_transferee or any(m.type is MessageType.TIMEOUT_NOW for *_, m in self.inflight):
            return False
        members = set(leader.conf.voters) | set(leader.conf.learners)
        cores = [self.nodes[m].core for m in members]
        return all(
            core is not None and core.applied == leader.log.last_index
            and core.role in (Role.LEADER, Role.FOLLOWER)
            for core in cores
        )

    def _summary(self) -> str:
        parts = []
        for n in self.nodes.values():
            parts.append(f"{n.id}:down" if n.core is None else f"{n.id}:{n.core.status()}")
        return "; ".join(parts)


def replay_command(seed: int) -> str:
    return f"SHOAL_SIM_SEED={seed} .venv/bin/python -m pytest tests/sim -q"


def run_seed(seed: int) -> Simulation:
    """Run one seed to the end; AssertionError (with the command that replays it) if it fails."""
    sim = Simulation(seed)
    try:
        sim.run()
    except Exception as exc:
        raise AssertionError(f"seed {seed} failed at tick {sim.now}: {exc}\n  faults: {sim.faults}\n"
                             f"  replay: {replay_command(seed)}") from exc
    # The run must have exercised the system, not idled through it.
    if not (sim.stats["puts_ok"] > 0 and sim.stats["gets_ok"] > 0):
        raise AssertionError(f"seed {seed} idled through its run: {sim.stats}\n  replay: {replay_command(seed)}")
    return sim
