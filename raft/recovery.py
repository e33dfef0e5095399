"""Offline recovery of a member's replicated state, for forcing a new one-member cluster.

`replay_log(data_dir, state_machine)` rebuilds the state machine from a member's data dir
without joining any cluster: the latest snapshot, then every NORMAL entry of the log after it.
The whole log is replayed, not only up to the commit index this member last heard of: a write
acknowledged to a client was committed by a majority, and the survivor may hold it without
having learned that it committed. (By log matching, the survivor's log is a prefix-consistent
history; an entry that never committed is one whose client got no acknowledgement.) The caller
then starts a fresh cluster seeded with that state, keeping the old data dir aside.
"""

from __future__ import annotations

from raft.node import StateMachine, _unwrap_snapshot
from raft.storage import DiskStorage, RecordCipher
from raft.types import EntryType


def replay_log(data_dir: str, state_machine: StateMachine, cipher: RecordCipher | None = None) -> int:
    """Restore `state_machine` from `data_dir` (encrypted with `cipher`, if given); returns the index
    of the last entry applied."""
    storage = DiskStorage(data_dir, cipher=cipher)
    try:
        loaded = storage.load()
    finally:
        storage.close()
    applied = 0
    if loaded.snapshot is not None:
        state_machine.restore(_unwrap_snapshot(loaded.snapshot.data).app)
        applied = loaded.snapshot.meta.index
    for entry in loaded.entries:
        if entry.index <= applied:
            continue
        if entry.type == EntryType.NORMAL and entry.data:
            state_machine.apply(entry)
        applied = entry.index
    return applied
