"""Tuning of one Raft core. All durations are in ticks; the driver decides how long a tick is."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Config:
    id: int
    election_tick: int = 10         # a follower campaigns after [election_tick, 2*election_tick) quiet ticks
    heartbeat_tick: int = 1         # the leader sends heartbeats every heartbeat_tick ticks
    max_size_per_msg: int = 1 << 20  # byte budget of the entries in one append (at least one entry is sent)
    max_inflight_msgs: int = 256    # unacknowledged appends per follower while pipelining
    pre_vote: bool = True           # a pre-election round, so a partitioned node cannot inflate terms
    check_quorum: bool = True       # the leader steps down without a quorum; followers honour its lease
    snapshot_chunk_size: int = 1 << 20  # bytes of snapshot data per SNAPSHOT message
    max_uncommitted_size: int = 0   # bytes of uncommitted proposals the leader accepts (0 = unlimited)
    rng: random.Random | None = None  # source of randomised election timeouts (default: seeded by id)

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ValueError(f"Config.id must be a positive node id, got {self.id}")
        if self.heartbeat_tick < 1:
            raise ValueError(f"Config.heartbeat_tick must be >= 1, got {self.heartbeat_tick}")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError(
                f"Config.election_tick ({self.election_tick}) must exceed heartbeat_tick ({self.heartbeat_tick})"
            )
        if self.max_inflight_msgs < 1:
            raise ValueError(f"Config.max_inflight_msgs must be >= 1, got {self.max_inflight_msgs}")
        if self.max_size_per_msg < 1:
            raise ValueError(f"Config.max_size_per_msg must be >= 1, got {self.max_size_per_msg}")
        if self.snapshot_chunk_size < 1:
            raise ValueError(f"Config.snapshot_chunk_size must be >= 1, got {self.snapshot_chunk_size}")
        if self.max_uncommitted_size < 0:
            raise ValueError(f"Config.max_uncommitted_size must be >= 0, got {self.max_uncommitted_size}")
        if self.rng is None:
            self.rng = random.Random(self.id)
