"""Plain data shared by the Raft core, its storage and its driver.

These are the contract between `raft/core.py` (pure state machine), `raft/wal.py` and
`raft/storage.py` (durable log), and `raft/node.py` (the asyncio driver). Everything here is
plain data that round-trips through msgpack via `to_wire`/`from_wire`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class EntryType(enum.IntEnum):
    NORMAL = 0          # application data
    CONF_CHANGE = 1     # data is an encoded ConfChange


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0
    REMOVE_NODE = 1
    ADD_LEARNER = 2     # promote a learner = ADD_VOTER of an existing learner


class MessageType(enum.IntEnum):
    PRE_VOTE = 0
    PRE_VOTE_RESP = 1
    VOTE = 2
    VOTE_RESP = 3
    APPEND = 4
    APPEND_RESP = 5
    HEARTBEAT = 6
    HEARTBEAT_RESP = 7
    SNAPSHOT = 8            # one chunk of an InstallSnapshot
    SNAPSHOT_RESP = 9
    TIMEOUT_NOW = 10        # leadership transfer
    READ_INDEX = 11         # follower asks the leader for a read index
    READ_INDEX_RESP = 12
    PROPOSE = 13            # reserved; proposals on followers fail with NotLeader instead
    REMOVED = 14            # "a committed configuration excludes you": (index, log_term) of that commit


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    term: int = 0
    vote: int = 0       # 0 = none
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: int
    context: bytes = b""    # e.g. the node's address, for the driver


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    conf: ConfState


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes = b""


@dataclass(slots=True)
class Message:
    type: MessageType
    to: int
    frm: int
    term: int
    log_term: int = 0       # term of the entry at `index` (append: prev log term; vote: last log term)
    index: int = 0          # append: prev log index; vote: last log index; resp: match/hint index
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""    # read-index request id, transfer flags, ...
    # InstallSnapshot chunking: the snapshot's meta, the chunk's byte offset and whether it is last.
    snapshot_meta: SnapshotMeta | None = None
    offset: int = 0
    chunk: bytes = b""
    done: bool = False


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: once applied index >= `index`, a read tagged `request_ctx` is linearizable."""

    index: int
    request_ctx: bytes


@dataclass(frozen=True, slots=True)
class SoftState:
    leader: int
    role: Role
    removed: bool = False   # this node knows a committed configuration excludes it (RaftCore.removed)


@dataclass(slots=True)
class Ready:
    """What the driver must do, in order: persist `hard_state`, `entries` and `snapshot`, then send
    `messages`, then apply `snapshot` (if any) and `committed_entries`, then call `advance(ready)`.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)


class NotLeader(Exception):
    """A proposal or read reached a node that is not the leader. `leader` is a hint (0 = unknown)."""

    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (leader hint: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(Exception):
    """The proposal cannot be accepted now (e.g. leadership transfer in progress, conf change pending)."""
