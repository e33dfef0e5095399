"""What a leader knows about each follower, and the flow control of appends to it.

Theory of operation
-------------------
Each follower is in one of three states:

* PROBE: the leader does not know where the follower's log matches. It sends at most one append
  per heartbeat interval (`probe_sent` pauses it) and walks `next` back on each rejection.
* REPLICATE: the match point is known. Appends are pipelined: `next` jumps optimistically past
  what was sent, and an `Inflights` window bounds the number of unacknowledged appends.
* SNAPSHOT: the follower needs entries the leader has compacted. The leader streams a snapshot
  in chunks (see `SnapshotSender`) and sends no appends until the follower reports the snapshot
  installed (or the transfer fails, which falls back to PROBE).

Invariant: `match < next`; `match` only grows while the follower stays in the configuration.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from raft.types import Snapshot


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """A bounded FIFO of the last index of each unacknowledged append."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"inflight capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._last_indexes: deque[int] = deque()

    def add(self, last_index: int) -> None:
        if self.full():
            raise RuntimeError("inflight window is full")
        self._last_indexes.append(last_index)

    def free_le(self, index: int) -> None:
        """Acknowledge every append whose last index is <= `index`."""
        q = self._last_indexes
        while q and q[0] <= index:
            q.popleft()

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def reset(self) -> None:
        self._last_indexes.clear()

    def __len__(self) -> int:
        return len(self._last_indexes)


@dataclass
class SnapshotSender:
    """The leader's side of one chunked InstallSnapshot stream to one follower.

    Stop-and-wait: one chunk is outstanding; the follower acknowledges the next offset it
    expects. A chunk unacknowledged for `retry_ticks` ticks is sent again.
    """

    snapshot: Snapshot
    chunk_size: int
    acked: int = 0              # bytes the follower confirmed
    in_flight: bool = False
    ticks_waiting: int = 0

    def next_chunk(self) -> tuple[int, bytes, bool]:
        data = self.snapshot.data
        end = min(self.acked + self.chunk_size, len(data))
        return self.acked, data[self.acked : end], end >= len(data)


@dataclass
class Progress:
    match: int = 0
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    recent_active: bool = False
    is_learner: bool = False
    inflights: Inflights = field(default_factory=lambda: Inflights(256))
    pending_snapshot: int = 0
    snapshot_sender: SnapshotSender | None = None

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_sender = None
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot: Snapshot, chunk_size: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot.meta.index
        self.snapshot_sender = SnapshotSender(snapshot, chunk_size)

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged entries up to `index`. True if `match` moved."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def sent_entries(self, last_index: int, count: int) -> None:
        """Bookkeeping after an append carrying `count` entries up to `last_index` was sent."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_decrement(self, rejected: int, hint: int) -> bool:
        """The follower rejected an append after `rejected`; `hint` is where to probe next.
        False if the rejection is stale."""
        if self.state is ProgressState.SNAPSHOT:
            return False
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
