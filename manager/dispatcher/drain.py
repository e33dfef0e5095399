"""Drain, never drop: a task leaves every node's rotation before its own node is told to stop it.

Theory of operation (leader only; one `DrainGate` per network push, one `HeldTasks` per session
stream):
- Every networks message of a session carries a sequence number (`"seq"`: 1, 2, ... per session,
  network_push.py). The agent acknowledges (`dispatcher.networks_applied` {session_id, seq}) the
  newest message whose views its data path has applied; a session's `acked` only grows, and never
  past what it was sent.
- The write that takes a task in rotation (observed RUNNING, desired state up to RUNNING, with a
  network address) past desired RUNNING is, for the task's own node, the order to stop it. When its
  node's stream meets it, the network index has already taken the task out of rotation and marked
  every session whose node uses one of the task's networks (every session, for ingress). Each such
  session either still has to send the message carrying the removal (it is marked: its next one,
  `seq + 1`) or has sent it (`seq`); the stream holds the task's changes back until every one of
  those sessions has acknowledged that seq.
- A hold ends when the last session it waits for acknowledges, closes or is retired (superseded by a
  new session of its node, or its node declared down): a node that cannot answer is not waited for.
  It also ends when its deadline passes (`DRAIN_ACK_TIMEOUT` after it began; the dispatcher's monitor
  calls `expire`), with a WARNING naming the nodes that did not answer.
- Level-triggered: while a task is held every event of it is absorbed, and at release the stream
  sends the task as the store has it then (an update; a remove if it was deleted or left the node).
  A complete set sent meanwhile (a resync after a dropped watch) carries a held task as it was
  before the hold, so the agent keeps running it. Only the held task waits: every other change of
  the stream flows on. A new session starts with no holds (its complete set is the store's state).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from manager.dispatcher.network_index import task_contribution
from manager.store import Event
from model import Task, TaskState

if TYPE_CHECKING:
    from manager.dispatcher.network_push import NetworkSession

log = logging.getLogger("shoal.dispatcher")

DRAIN_ACK_TIMEOUT = 5.0     # seconds a stop waits for the nodes' acknowledgements at most

_RUNNING = TaskState.RUNNING


class Acker(Protocol):
    """A session as the gate sees it: what it was sent and what its agent has applied."""

    node_id: str
    seq: int
    acked: int


def rotation_networks(old: Task, new: Task) -> tuple[str, ...]:
    """The networks on which `old` was in rotation, when `new` takes its desired state past
    RUNNING on the same node (() otherwise: nothing to drain). O(1) for tasks without networks."""
    if not old.networks_attachments or not (old.desired_state <= _RUNNING < new.desired_state) \
            or old.node_id != new.node_id:
        return ()
    contribution = task_contribution(old)
    if contribution is None:
        return ()
    return tuple(network_id for network_id, _, dns in contribution[3] if dns is not None)


class Hold:
    """One task held back in one stream, waiting for sessions to acknowledge a seq each."""

    __slots__ = ("before", "deadline", "done", "task_id", "waiting", "wakeup")

    def __init__(self, before: Task, deadline: float, waiting: dict[Acker, int], wakeup: asyncio.Event) -> None:
        self.task_id = before.id
        self.before = before            # the task as the agent last had it
        self.deadline = deadline
        self.waiting = waiting          # session -> the seq it must acknowledge
        self.wakeup = wakeup            # the holding stream's
        self.done = False


class DrainGate:
    """Every hold of a dispatcher, by the sessions they wait for. Sans I/O: the clock is given."""

    def __init__(self, clock: Callable[[], float], bound: float = DRAIN_ACK_TIMEOUT) -> None:
        self._clock = clock
        self.bound = bound
        self._holds: set[Hold] = set()
        self._by_session: dict[Acker, set[Hold]] = {}
        self.held = 0        # holds begun
        self.expired = 0     # holds that ended by their deadline

    def hold(self, before: Task, waiting: dict[Acker, int], wakeup: asyncio.Event) -> Hold | None:
        """Hold `before`'s task until each session of `waiting` acknowledged its seq (None: every
        one already has; nothing to wait for)."""
        waiting = {session: seq for session, seq in waiting.items() if seq > session.acked}
        if not waiting:
            return None
        hold = Hold(before, self._clock() + self.bound, waiting, wakeup)
        self._holds.add(hold)
        for session in waiting:
            self._by_session.setdefault(session, set()).add(hold)
        self.held += 1
        return hold

    def acked(self, session: Acker) -> None:
        """`session.acked` grew: end the waits it satisfies."""
        for hold in list(self._by_session.get(session, ())):
            if hold.waiting.get(session, 0) <= session.acked:
                self._unwait(hold, session)

    def settled(self, session: Acker) -> None:
        """`session` was marked, but its node's views did not change after all: the removals it
        was to carry are in what it sent already (or its node does not hold the network)."""
        for hold in self._by_session.get(session, ()):
            if hold.waiting.get(session, 0) > session.seq:
                hold.waiting[session] = session.seq
        self.acked(session)

    def gone(self, session: Acker) -> None:
        """`session` closed or was retired: nobody waits for it any more."""
        for hold in list(self._by_session.get(session, ())):
            self._unwait(hold, session)
        self._by_session.pop(session, None)

    def expire(self) -> None:
        """End the holds whose deadline has passed, naming the nodes that did not answer."""
        now = self._clock()
        for hold in [hold for hold in self._holds if hold.deadline <= now]:
            nodes = sorted({session.node_id for session in hold.waiting})
            log.warning("task %s is stopped before %d node(s) acknowledged its leaving the rotation "
                        "within %.1f s: %s", hold.task_id, len(nodes), self.bound, ", ".join(nodes),
                        extra={"task": hold.task_id, "nodes": nodes})
            self.expired += 1
            self._finish(hold)

    def release(self, hold: Hold) -> None:
        """The holding stream is done with `hold` (sent, or the stream ended)."""
        if not hold.done:
            hold.done = True
            self._forget(hold)

    def pending(self) -> int:
        return len(self._holds)

    def _unwait(self, hold: Hold, session: Acker) -> None:
        hold.waiting.pop(session, None)
        holds = self._by_session.get(session)
        if holds is not None:
            holds.discard(hold)
            if not holds:
                del self._by_session[session]
        if not hold.waiting:
            self._finish(hold)

    def _finish(self, hold: Hold) -> None:
        hold.done = True
        self._forget(hold)
        hold.wakeup.set()

    def _forget(self, hold: Hold) -> None:
        self._holds.discard(hold)
        for session in hold.waiting:
            holds = self._by_session.get(session)
            if holds is not None:
                holds.discard(hold)
                if not holds:
                    del self._by_session[session]


class HeldTasks:
    """One assignment stream's held tasks (see the module's theory of operation)."""

    def __init__(self, node_id: str, networks: NetworkSession | None) -> None:
        self._node_id = node_id
        self._networks = networks
        self._held: dict[str, Hold] = {}

    def absorb(self, event: Event) -> bool:
        """Is this task event held back (its task was held already, or is now)?"""
        task = event.obj
        if task.id in self._held:
            return True
        if self._networks is None or event.op != "update" or event.old is None or task.node_id != self._node_id:
            return False
        network_ids = rotation_networks(event.old, task)
        if not network_ids:
            return False
        hold = self._networks.hold(event.old, network_ids)
        if hold is None:
            return False
        self._held[task.id] = hold
        return True

    def ready(self) -> bool:
        """Has a hold ended (its task is to be sent)?"""
        return any(hold.done for hold in self._held.values())

    def take_released(self) -> list[str]:
        """The IDs of the tasks whose hold ended; they are held no longer."""
        released = [task_id for task_id, hold in self._held.items() if hold.done]
        for task_id in released:
            del self._held[task_id]
        return released

    def complete(self, tasks: list[Task]) -> list[Task]:
        """A complete set's tasks, with each held task as it was before its hold."""
        if not self._held:
            return tasks
        return [*(task for task in tasks if task.id not in self._held), *(hold.before for hold in self._held.values())]

    def close(self) -> None:
        if self._networks is not None:
            for hold in self._held.values():
                self._networks.release(hold)
        self._held.clear()
