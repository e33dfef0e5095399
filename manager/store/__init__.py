"""manager.store: the replicated store (see store.py for the theory of operation).

Tables: clusters, nodes, services, tasks, networks, secrets, configs.
"""

from manager.store.errors import (
    AmbiguousRef,
    NameConflict,
    NotFound,
    ObjectExists,
    StaleVersion,
    StoreError,
    WatchDropped,
)
from manager.store.memory import TABLES, ReadTx
from manager.store.store import (
    MAX_CHANGES_PER_PROPOSAL,
    Batch,
    BatchResult,
    InMemoryProposer,
    Proposer,
    Store,
    retry_on_conflict,
)
from manager.store.tx import WriteTx
from manager.store.watch import BROADCAST, Event, Fanout, Subscription

__all__ = [
    "BROADCAST", "MAX_CHANGES_PER_PROPOSAL", "TABLES", "AmbiguousRef", "Batch", "BatchResult", "Event", "Fanout",
    "InMemoryProposer", "NameConflict", "NotFound", "ObjectExists", "Proposer", "ReadTx", "StaleVersion",
    "Store", "StoreError", "Subscription", "WatchDropped", "WriteTx", "retry_on_conflict",
]
