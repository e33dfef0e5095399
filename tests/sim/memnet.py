"""A tiny synchronous in-memory network of RaftCores for scripted, transcript-like tests.

Each node has a `MemStorage` holding exactly what its driver persisted (the simulator reuses it to
model crashes that lose unsynced state). `settle()` delivers messages until the network is quiet;
nothing ticks unless a test says so, so every election and timeout in a transcript is explicit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raft.config import Config
from raft.core import RaftCore
from raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SoftState,
)


@dataclass
class MemStorage:
    """What survived on a node's disk: the last snapshot, the entries after it, the hard state."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def save_snapshot(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.entries = [e for e in self.entries if e.index > snap.meta.index]

    def save_entries(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        self.entries = [e for e in self.entries if e.index < first] + list(entries)

    def persist(self, rd: Ready, *, entry_limit: int | None = None, hard_state: bool = True) -> None:
        """Persist a Ready: snapshot, then entries, then hard state (the order a WAL writes them).
        `entry_limit`/`hard_state=False` model a torn write that kept only a prefix."""
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        ents = rd.entries if entry_limit is None else rd.entries[:entry_limit]
        self.save_entries(ents)
        if hard_state and rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def compact(self, snap: Snapshot) -> None:
        self.save_snapshot(snap)

    def restart_args(self) -> dict[str, Any]:
        return {"hard_state": self.hard_state, "snapshot": self.snapshot, "entries": list(self.entries)}


def encode_state(applied: list[bytes]) -> bytes:
    return b"\n".join(applied)


def decode_state(data: bytes) -> list[bytes]:
    return data.split(b"\n") if data else []


class MemNet:
    def __init__(self, voters: int = 3, *, learners: tuple[int, ...] = (), **cfg: Any) -> None:
        self.cfg = cfg
        self.peers = ConfState(tuple(range(1, voters + 1)), learners)
        self.nodes: dict[int, RaftCore] = {}
        self.storage: dict[int, MemStorage] = {}
        self.applied: dict[int, list[bytes]] = {}          # data of applied normal entries, per node
        self.read_states: dict[int, list[ReadState]] = {}
        self.installed: dict[int, list[Snapshot]] = {}     # snapshots installed from a leader
        self.soft_states: dict[int, list[SoftState]] = {}  # every soft state a node's Readies reported
        self.queue: list[Message] = []
        self.down: set[int] = set()
        self.cut: set[tuple[int, int]] = set()              # (from, to) links that drop everything
        self.drop_rules: list[Callable[[Message], bool]] = []
        self.sent: list[Message] = []                       # every message that left a node
        for nid in (*self.peers.voters, *self.peers.learners):
            self._start(nid, peers=self.peers)

    def config(self, nid: int) -> Config:
        return Config(id=nid, **self.cfg)

    def _start(self, nid: int, *, peers: ConfState | None = None) -> RaftCore:
        st = self.storage.setdefault(nid, MemStorage())
        args = st.restart_args()
        applied: list[bytes] = []
        index = 0
        if st.snapshot is not None:
            applied = decode_state(st.snapshot.data)
            index = st.snapshot.meta.index
        self.applied[nid] = applied
        self.read_states.setdefault(nid, [])
        self.installed.setdefault(nid, [])
        self.soft_states.setdefault(nid, [])
        core = RaftCore(self.config(nid), peers=peers, applied=index, **args)
        self.nodes[nid] = core
        self.down.discard(nid)
        self.process(nid)
        return core

    def add_node(self, nid: int) -> RaftCore:
        """A brand-new, empty node that waits to be added to the configuration."""
        return self._start(nid)

    def crash(self, nid: int) -> None:
        self.down.add(nid)
        self.queue = [m for m in self.queue if m.to != nid and m.frm != nid]

    def restart(self, nid: int) -> RaftCore:
        founder = nid in self.peers.voters or nid in self.peers.learners
        return self._start(nid, peers=self.peers if founder else None)

    # ------------------------------------------------------------------ driver loop
    def process(self, nid: int) -> None:
        core = self.nodes[nid]
        while nid not in self.down and core.has_ready():
            rd = core.ready()
            self.storage[nid].persist(rd)
            self.queue.extend(rd.messages)
            self.sent.extend(rd.messages)
            if rd.snapshot is not None:
                self.applied[nid] = decode_state(rd.snapshot.data)
                self.installed[nid].append(rd.snapshot)
            for e in rd.committed_entries:
                if e.type is EntryType.NORMAL and e.data:
                    self.applied[nid].append(e.data)
            self.read_states[nid].extend(rd.read_states)
            if rd.soft_state is not None:
                self.soft_states[nid].append(rd.soft_state)
            core.advance(rd)

    def _dropped(self, m: Message) -> bool:
        return m.to in self.down or m.frm in self.down or (m.frm, m.to) in self.cut or any(
            rule(m) for rule in self.drop_rules
        )

    def deliver(self) -> int:
        batch, self.queue = self.queue, []
        for m in batch:
            if not self._dropped(m) and m.to in self.nodes:
                self.nodes[m.to].step(m)
        for nid in self.nodes:
            self.process(nid)
        return len(batch)

    def settle(self, max_rounds: int = 10_000) -> None:
        for nid in self.nodes:
            self.process(nid)
        for _ in range(max_rounds):
            if not self.deliver():
                return
        raise AssertionError("network did not go quiet")

    def tick(self, *nids: int, times: int = 1) -> None:
        for _ in range(times):
            for nid in nids or tuple(self.nodes):
                if nid not in self.down:
                    self.nodes[nid].tick()
                    self.process(nid)
            self.settle()

    def campaign(self, nid: int) -> None:
        """Tick only `nid` until it starts an election, then let the election play out."""
        core = self.nodes[nid]
        for _ in range(3 * core.cfg.election_tick):
            core.tick()
            if core.role is not Role.FOLLOWER:
                break
            self.process(nid)
        self.process(nid)
        self.settle()

    # ------------------------------------------------------------------ partitions
    def isolate(self, nid: int) -> None:
        for other in self.nodes:
            if other != nid:
                self.cut |= {(nid, other), (other, nid)}

    def partition(self, *groups: set[int]) -> None:
        """Cut every link between nodes of different groups."""
        for a in groups:
            for b in groups:
                if a is not b:
                    self.cut |= {(x, y) for x in a for y in b}

    def heal(self) -> None:
        self.cut.clear()
        self.drop_rules.clear()

    # ------------------------------------------------------------------ helpers
    def propose(self, nid: int, data: bytes) -> int:
        index = self.nodes[nid].propose(data)
        self.process(nid)
        return index

    def compact(self, nid: int) -> Snapshot:
        """Node `nid` snapshots its applied state and compacts its log."""
        core = self.nodes[nid]
        snap = Snapshot(core.snapshot_meta(core.applied), encode_state(self.applied[nid]))
        self.storage[nid].compact(snap)
        core.compact(snap)
        return snap

    def leaders(self) -> list[int]:
        return [n for n, c in self.nodes.items() if n not in self.down and c.role is Role.LEADER]

    def log_terms(self, nid: int) -> list[tuple[int, int]]:
        log = self.nodes[nid].log
        return [(e.index, e.term) for e in log.entries]
