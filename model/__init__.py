"""model: the object model shared by every side (plain data, no I/O).

Objects keep their Spec as the Engine API dict; `to_api()` gives the Engine API shape.
"""

from model.ids import format_time, is_id, new_id, parse_time
from model.node_state import (
    NODE_MOVES,
    REACHABILITY_MOVES,
    IllegalNodeTransition,
    NodeState,
    Reachability,
    check_node_move,
    check_reachability_move,
)
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
from model.update_state import UPDATE_MOVES, IllegalUpdateTransition, UpdateState, check_update_move

__all__ = [
    "KIND_WORDS", "LEGAL_MOVES", "NODE_MOVES", "OBJECT_TYPES", "REACHABILITY_MOVES", "UNIQUE_NAME_TABLES",
    "UPDATE_MOVES", "Cluster", "Config", "IllegalNodeTransition", "IllegalTransition", "IllegalUpdateTransition",
    "Network", "Node", "NodeState", "Reachability", "Secret", "Service", "StoreObject", "Task", "TaskState",
    "TaskStatus", "UpdateState", "check_node_move", "check_reachability_move", "check_transition",
    "check_update_move", "format_time", "is_id", "new_id", "parse_time",
]
