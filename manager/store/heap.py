"""Garbage-collector settings for a manager process, whose store holds the whole cluster state.

Theory of operation: CPython collects its youngest generation every 700 net allocations of
container objects and promotes what survives. A manager's working set is large (every task,
node and service, with their specs and statuses) and its writes churn short-lived objects
(old versions, records, events) that live just long enough to be promoted. With the default
thresholds a manager holding 100,000 tasks spends about a third of its CPU in the collector,
mostly in full collections. `tune_gc` makes young collections rarer (fewer short-lived objects
promoted, so fewer full collections); the collector still runs, so reference cycles are still
freed. The daemon calls it once at start; benchmarks call it to measure the manager as it runs.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
MIDDLE_THRESHOLD = 20
OLD_THRESHOLD = 10


def tune_gc() -> tuple[int, int, int]:
    """Apply the manager's collector thresholds; returns them."""
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    return gc.get_threshold()
