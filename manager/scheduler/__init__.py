"""manager.scheduler: filters, placement and the scheduling loop (see scheduler.py)."""

from manager.scheduler.filters import (
    AvailabilityFilter,
    ConstraintFilter,
    CPUFilter,
    Filter,
    MaxReplicasFilter,
    MemoryFilter,
    Pipeline,
    PlatformFilter,
    ReadyFilter,
    default_filters,
)
from manager.scheduler.nodeinfo import NodeInfo
from manager.scheduler.placement import place_group, place_on_node
from manager.scheduler.scheduler import ASSIGNED_MESSAGE, PENDING_MESSAGE, Decision, Scheduler

__all__ = [
    "ASSIGNED_MESSAGE", "PENDING_MESSAGE", "AvailabilityFilter", "CPUFilter", "ConstraintFilter", "Decision",
    "Filter", "MaxReplicasFilter", "MemoryFilter", "NodeInfo", "Pipeline", "PlatformFilter", "ReadyFilter",
    "Scheduler", "default_filters", "place_group", "place_on_node",
]
