"""model: the object model shared by every side (plain data, no I/O).

Objects keep their Spec as the Engine API dict; `to_api()` gives the Engine API shape.
"""

from model.ids import format_time, is_id, new_id, parse_time
from model.objects import (
    KIND_WORDS,
    OBJECT_TYPES,
    UNIQUE_NAME_TABLES,
    Cluster,
    Config,
    Network,
    Node,
    Secret,
    Service,
    StoreObject,
    Task,
)
from model.task_state import LEGAL_MOVES, IllegalTransition, TaskState, TaskStatus, check_transition

__all__ = [
    "KIND_WORDS", "LEGAL_MOVES", "OBJECT_TYPES", "UNIQUE_NAME_TABLES", "Cluster", "Config",
    "IllegalTransition", "Network", "Node", "Secret", "Service", "StoreObject", "Task", "TaskState",
    "TaskStatus", "check_transition", "format_time", "is_id", "new_id", "parse_time",
]
