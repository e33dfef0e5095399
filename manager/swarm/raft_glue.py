"""The replicated store on Raft: the state machine adapter and the proposer.

Theory of operation: every manager's store applies every committed entry (`StoreStateMachine`).
A write runs its transaction on the local store, then proposes the encoded changes. On the
leader that is a local Raft proposal. On a follower the bytes are forwarded to the leader over
the cluster port (`raft.propose`); the leader answers with its applied index once the entry is
applied there, and the follower waits until it has applied that index itself, so a write is
visible locally when `update()` returns. Version and name checks run again at apply time on
every replica, so a transaction built on a stale view is rejected, never half-applied. With no
leader, the proposer waits for an election for a bounded time, then fails with a clear
"no quorum" error instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aio import cancel_and_wait
from manager.store import Store
from raft.node import NodeStopped, RaftNode
from raft.types import Entry, NotLeader, ProposalDropped
from rpc.errors import RpcError, Unavailable

NO_LEADER = ("rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few "
             "managers are online. Make sure more than half of the managers are online.")
NOT_COMMITTED = ("rpc error: code = Unavailable desc = the write could not be committed: too few managers are "
                 "reachable (no quorum); it may still apply if quorum returns")
LEADER_WAIT = 4.0
COMMIT_WAIT = 8.0
RETRY_INTERVAL = 0.2     # seconds between retries of a forwarded write while the leader is unchanged


class NoQuorum(Unavailable):
    """No leader could be reached within the bound: too few managers are online."""


class StoreStateMachine:
    def __init__(self, store: Store) -> None:
        self.store = store

    def apply(self, entry: Entry) -> Any:
        self.store.apply(entry.data, entry.index)
        return None

    def snapshot(self) -> bytes:
        return self.store.snapshot()

    def restore(self, data: bytes) -> None:
        self.store.restore(data)


Forward = Callable[[int, bytes], Awaitable[int]]   # (leader raft id, data) -> leader's applied index


class RaftProposer:
    def __init__(self, forward: Forward, leader_wait: float = LEADER_WAIT) -> None:
        self.raft: RaftNode | None = None
        self._forward = forward
        self._leader_wait = leader_wait

    async def propose(self, data: bytes) -> None:
        raft = self.raft
        if raft is None:
            raise NoQuorum(NO_LEADER)
        deadline = time.monotonic() + self._leader_wait
        commit_deadline = time.monotonic() + COMMIT_WAIT
        while True:
            try:
                await _propose_as_leader(raft, data, commit_deadline)
                return
            except (NotLeader, ProposalDropped) as e:
                leader = e.leader if isinstance(e, NotLeader) and e.leader else raft.leader
                if leader and leader != raft.id:
                    try:
                        index = await self._forward(leader, data)
                    except RpcError:
                        if time.monotonic() >= deadline:
                            raise NoQuorum(NO_LEADER) from None
                        await _wait_for_change(raft, deadline)
                        continue
                    await raft.wait_applied(index)
                    return
            except NodeStopped:
                raise NoQuorum("this manager is shutting down") from None
            if time.monotonic() >= deadline:
                raise NoQuorum(NO_LEADER)
            await _wait_for_change(raft, deadline)


async def _propose_as_leader(raft: RaftNode, data: bytes, deadline: float) -> None:
    """Propose locally; give up with NoQuorum (the write's outcome unknown) if this node stops
    being the leader or the deadline passes before the entry commits, instead of hanging."""
    proposal = asyncio.ensure_future(raft.propose(data))
    lost = asyncio.ensure_future(raft.wait_until(lambda: not raft.is_leader))
    try:
        done, _ = await asyncio.wait({proposal, lost}, timeout=max(0.0, deadline - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
        if proposal in done:
            proposal.result()
            return
        if lost in done:
            lost.result()   # NodeStopped when the node stopped
        raise NoQuorum(NOT_COMMITTED)
    finally:
        await cancel_and_wait([proposal, lost])


async def _wait_for_change(raft: RaftNode, deadline: float) -> None:
    """Before a retry: until the leader changes, a short interval passes, or the deadline."""
    leader = raft.leader
    with contextlib.suppress(TimeoutError):
        await raft.wait_until(lambda: raft.leader != leader,
                              timeout=min(RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))
