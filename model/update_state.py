"""A service's UpdateStatus.State, and the table of legal moves.

Invariant: `Service.update_status` is None (no update since the spec last changed) or holds one
of the states below, and it only ever changes along `UPDATE_MOVES`: `Service.set_update_status`
refuses any other move with `IllegalUpdateTransition` and leaves the service unchanged.

The moves are the ones swarmkit makes (orchestrator/update/updater.go and the control API's
UpdateService); None stands for "no UpdateStatus":
- None -> updating: the updater starts rolling out a new spec;
- updating -> paused | completed | rollback_started: the failure action pause, every slot
  done, the failure action rollback;
- rollback_started -> rollback_paused | rollback_completed: a rollback past its failure ratio
  pauses (a rollback is never rolled back), or it is done;
- every state, None included -> rollback_started: `service update --rollback` (a manual
  rollback, also of a rollback, swaps PreviousSpec back in);
- every state, None included -> None: a new spec clears the status.
One move is shoal's own: completed | rollback_completed -> updating, when slots turn dirty again
after an update ended (swarmkit then rolls them out under the old, finished status). A paused
update stays paused until a new spec (None) or a manual rollback.
"""

from __future__ import annotations

from model.api_enum import ApiEnum
from model.task_state import IllegalTransition


class UpdateState(ApiEnum):
    """The Engine API spelling of each state is its value."""

    UPDATING = "updating"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_PAUSED = "rollback_paused"
    ROLLBACK_COMPLETED = "rollback_completed"


class IllegalUpdateTransition(IllegalTransition):
    """A service's UpdateStatus.State would make a move the table does not allow."""


_S = UpdateState

# The states (None: no UpdateStatus) each state may move to.
UPDATE_MOVES: dict[UpdateState | None, frozenset[UpdateState | None]] = {
    None: frozenset({_S.UPDATING, _S.ROLLBACK_STARTED, None}),
    _S.UPDATING: frozenset({_S.PAUSED, _S.COMPLETED, _S.ROLLBACK_STARTED, None}),
    _S.PAUSED: frozenset({_S.ROLLBACK_STARTED, None}),
    _S.COMPLETED: frozenset({_S.UPDATING, _S.ROLLBACK_STARTED, None}),
    _S.ROLLBACK_STARTED: frozenset({_S.ROLLBACK_PAUSED, _S.ROLLBACK_COMPLETED, _S.ROLLBACK_STARTED, None}),
    _S.ROLLBACK_PAUSED: frozenset({_S.ROLLBACK_STARTED, None}),
    _S.ROLLBACK_COMPLETED: frozenset({_S.UPDATING, _S.ROLLBACK_STARTED, None}),
}


def _name(state: UpdateState | None) -> str:
    return "none" if state is None else state.value


def check_update_move(current: UpdateState | None, new: UpdateState | None) -> None:
    if new not in UPDATE_MOVES[current]:
        raise IllegalUpdateTransition(f"update state cannot move from {_name(current)} to {_name(new)}")
