"""A node's Status.State and its ManagerStatus.Reachability, and their tables of legal moves.

Invariant: a node's state and a manager's reachability only ever change along `NODE_MOVES` and
`REACHABILITY_MOVES`: `Node.set_state` and `Node.set_reachability` refuse any other move with
`IllegalNodeTransition` and leave the node unchanged. (A node is created in some state, usually
unknown; creating one, or a manager status, is not a move.)

The state moves are the ones swarmkit's dispatcher makes:
- any state -> ready: the node opens a session (registers), also again when already ready;
- ready | unknown -> down: its heartbeats stopped ("heartbeat failure");
- ready -> disconnected: its session stream ended while it looks for another manager;
- ready | unknown | disconnected -> unknown: a new leader's dispatcher does not know yet who is
  alive (and never resurrects a down node that way).
shoal's dispatcher uses ready and down only: a new leader gives every node a fresh grace, and a
closed session only shortens it. A down node leaves down only by registering again.

Reachability is what the leader last heard from a manager: reachable and unreachable follow
each other freely (an unchanged one may be written again); unknown is where a manager starts
before anyone judged it, and nothing moves back to it.
"""

from __future__ import annotations

from model.api_enum import ApiEnum
from model.task_state import IllegalTransition


class NodeState(ApiEnum):
    """The Engine API spelling of each state is its value."""

    UNKNOWN = "unknown"
    DOWN = "down"
    READY = "ready"
    DISCONNECTED = "disconnected"


class Reachability(ApiEnum):
    UNKNOWN = "unknown"
    UNREACHABLE = "unreachable"
    REACHABLE = "reachable"


class IllegalNodeTransition(IllegalTransition):
    """A node's state or a manager's reachability would make a move its table does not allow."""


_N = NodeState
_R = Reachability

# The states each node state may move to.
NODE_MOVES: dict[NodeState, frozenset[NodeState]] = {
    _N.UNKNOWN: frozenset({_N.READY, _N.DOWN, _N.UNKNOWN}),
    _N.READY: frozenset({_N.READY, _N.DOWN, _N.DISCONNECTED, _N.UNKNOWN}),
    _N.DISCONNECTED: frozenset({_N.READY, _N.UNKNOWN}),
    _N.DOWN: frozenset({_N.READY}),
}

# The reachabilities each reachability may move to.
REACHABILITY_MOVES: dict[Reachability, frozenset[Reachability]] = {
    _R.UNKNOWN: frozenset({_R.REACHABLE, _R.UNREACHABLE}),
    _R.REACHABLE: frozenset({_R.REACHABLE, _R.UNREACHABLE}),
    _R.UNREACHABLE: frozenset({_R.UNREACHABLE, _R.REACHABLE}),
}


def check_node_move(current: NodeState, new: NodeState) -> None:
    if new not in NODE_MOVES[current]:
        raise IllegalNodeTransition(f"node state cannot move from {current.value} to {new.value}")


def check_reachability_move(current: Reachability, new: Reachability) -> None:
    if new not in REACHABILITY_MOVES[current]:
        raise IllegalNodeTransition(f"manager reachability cannot move from {current.value} to {new.value}")
