"""Raft membership on the cluster port, and the leader's membership loops.

RPCs (managers only): `raft.join` adds the caller as a voter and records its manager status;
`raft.propose` lets a follower's store write through the leader; `raft.leave` takes the caller
out of Raft. Only the leader serves them; others answer NotLeaderError with its address.

Leader loops (one leadership term each):
- the reachability monitor writes each manager's Reachability from when the leader last heard
  from it, so every manager's `node ls` agrees (moves along the table in model/node_state.py;
  it only ever writes reachable or unreachable, which every reachability may move to);
- the role reconciler carries out demotions: a manager whose spec says worker is removed from
  Raft (leadership is handed over first if it is the leader itself), then loses its manager
  status. Promotions are driven by the promoted node, which calls `raft.join`.

A cluster forced anew from one manager's state (`swarm init --force-new-cluster`) refuses the other
managers of the old one (`refuse_old_managers`, see raft/node.py "Refused members"): back with
their old logs, they would otherwise make a quorum of the old configuration and take it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manager.store import ReadTx, Store, WriteTx, retry_on_conflict
from model import Node, Reachability
from raft.members import Member, write_refused_members
from raft.node import RaftNode
from raft.transport import parse_address
from raft.types import NotLeader
from rpc.errors import FailedPrecondition, InvalidArgument, NotLeaderError, Unavailable
from rpc.server import Access, Peer, RpcServer

log = logging.getLogger("shoal.membership")

REACHABILITY_INTERVAL = 0.25
UNREACHABLE_AFTER = 1.5     # seconds without a message from a manager
CATCH_UP_TIMEOUT = 20.0     # a joining manager's time to replicate the log as a learner


def manager_nodes(tx: ReadTx) -> list[Node]:
    return [n for n in tx.all("nodes") if n.manager_status is not None]


def node_of_raft_id(tx: ReadTx, raft_id: int) -> Node | None:
    for node in manager_nodes(tx):
        if int((node.manager_status or {}).get("RaftID", 0)) == raft_id:
            return node
    return None


def refuse_old_managers(raft_dir: Path, old: Store, keep_node: str) -> dict[int, Member]:
    """Before a forced new cluster's first start in `raft_dir`: refuse the Raft members recorded in the
    old cluster's store `old`, all but node `keep_node`. Returns them. Blocking file I/O."""
    refused: dict[int, Member] = {}
    for node in old.view(manager_nodes):
        status = node.manager_status or {}
        raft_id, addr = int(status.get("RaftID", 0)), str(status.get("Addr", ""))
        if node.id != keep_node and raft_id and addr:
            refused[raft_id] = Member(parse_address(addr), {"node_id": node.id})
    write_refused_members(str(raft_dir), refused)
    return refused


class MembershipService:
    def __init__(self, store: Store, raft: Callable[[], RaftNode], leader_addr: Callable[[], str]) -> None:
        self._store = store
        self._raft = raft
        self._leader_addr = leader_addr

    def register(self, server: RpcServer) -> None:
        server.register("raft.join", self.join, Access.MANAGER)
        server.register("raft.members", self.members, Access.MANAGER)
        server.register("raft.propose", self.propose, Access.MANAGER)
        server.register("raft.leave", self.leave, Access.MANAGER)

    def _leader(self) -> RaftNode:
        raft = self._raft()
        if not raft.is_leader:
            raise NotLeaderError("this manager is not the leader", leader_addr=self._leader_addr())
        return raft

    async def join(self, peer: Peer, params: dict[str, Any]) -> Any:
        raft = self._leader()
        raft_id, addr = int(params.get("raft_id", 0)), str(params.get("addr", ""))
        if raft_id <= 0:
            raise InvalidArgument("raft.join needs a positive raft_id")
        if raft_id in raft.refused:
            raise FailedPrecondition(f"raft id {raft_id} belongs to the cluster this one was forced from; "
                                     "join as a new member")
        try:
            parse_address(addr)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        node = self._store.view(lambda tx: tx.get("nodes", peer.node_id))
        if node is None or node.role != "manager":
            raise FailedPrecondition(f"node {peer.node_id} is not meant to be a manager")
        if raft_id not in raft.voters:
            try:
                await self._add_voter(raft, raft_id, Member(parse_address(addr), {"node_id": peer.node_id}))
            except NotLeader:
                raise NotLeaderError("leadership changed", leader_addr=self._leader_addr()) from None

        def record(tx: WriteTx) -> None:
            current = tx.get("nodes", peer.node_id)
            if current is None:
                return
            current = current.copy()
            current.set_manager_status(raft_id, addr, Reachability.REACHABLE)  # it just called us
            tx.update(current)

        await retry_on_conflict(lambda: self._store.update(record))
        return {"members": {str(i): f"{m.raft[0]}:{m.raft[1]}" for i, m in raft.members.items()}}

    async def _add_voter(self, raft: RaftNode, raft_id: int, member: Member) -> None:
        """Add as a learner, wait until it has caught up, then promote: a new manager that cannot
        keep up never counts towards quorum, so joining can never stall the swarm."""
        if raft_id not in raft.learners:
            await raft.add_member(raft_id, member, learner=True)
        target = raft.commit_index
        try:
            await raft.wait_until(lambda: raft.match_index(raft_id) >= target or not raft.is_leader,
                                  timeout=CATCH_UP_TIMEOUT)
        except TimeoutError:
            raise Unavailable(f"new manager (raft id {raft_id}) did not catch up within {CATCH_UP_TIMEOUT:.0f}s") \
                from None
        if not raft.is_leader:
            raise NotLeader(raft.leader)
        await raft.promote_learner(raft_id)

    async def members(self, peer: Peer, params: dict[str, Any]) -> Any:
        raft = self._raft()
        return {"members": {str(i): f"{m.raft[0]}:{m.raft[1]}" for i, m in raft.members.items()}}

    async def propose(self, peer: Peer, params: dict[str, Any]) -> Any:
        raft = self._leader()
        data = params.get("data")
        if not isinstance(data, bytes):
            raise InvalidArgument("raft.propose needs bytes")
        try:
            await raft.propose(data)
        except NotLeader:
            raise NotLeaderError("leadership changed", leader_addr=self._leader_addr()) from None
        return {"index": raft.applied_index}

    async def leave(self, peer: Peer, params: dict[str, Any]) -> Any:
        raft = self._leader()
        node = self._store.view(lambda tx: tx.get("nodes", peer.node_id))
        if node is None or node.manager_status is None:
            return {}
        await _remove_manager(self._store, raft, node, demote_spec=True)
        return {}


async def _remove_manager(store: Store, raft: RaftNode, node: Node, demote_spec: bool) -> None:
    raft_id = int((node.manager_status or {}).get("RaftID", 0))
    if raft_id and raft_id in raft.voters:
        await raft.remove_member(raft_id)

    def clear(tx: WriteTx) -> None:
        current = tx.get("nodes", node.id)
        if current is None:
            return
        current = current.copy()
        current.manager_status = None
        if demote_spec:
            current.spec = {**current.spec, "Role": "worker"}
        tx.update(current)

    await retry_on_conflict(lambda: store.update(clear))
    log.info("manager removed from raft", extra={"node": node.id, "raft_id": raft_id})


class ReachabilityMonitor:
    def __init__(self, store: Store, raft: RaftNode) -> None:
        self._store = store
        self._raft = raft

    def _reachability(self, node: Node) -> Reachability:
        raft_id = int((node.manager_status or {}).get("RaftID", 0))
        if raft_id == self._raft.id:
            return Reachability.REACHABLE
        heard = self._raft.last_heard.get(raft_id)
        now = asyncio.get_running_loop().time()
        reachable = heard is not None and now - heard < UNREACHABLE_AFTER
        return Reachability.REACHABLE if reachable else Reachability.UNREACHABLE

    async def run(self) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(REACHABILITY_INTERVAL)
            now = time.monotonic()
            if now - started < UNREACHABLE_AFTER:
                continue  # give every manager a chance to answer the new leader first
            changes = {}
            for node in self._store.view(manager_nodes):
                wanted = self._reachability(node)
                if node.reachability is not wanted:
                    changes[node.id] = wanted
            if changes:
                await self._write(changes)

    async def _write(self, changes: dict[str, Reachability]) -> None:
        def fn(tx: WriteTx) -> None:
            for node_id, reachability in changes.items():
                node = tx.get("nodes", node_id)
                if node is None or node.manager_status is None:
                    continue
                node = node.copy()
                node.set_reachability(reachability)
                tx.update(node)

        try:
            await retry_on_conflict(lambda: self._store.update(fn))
        except Exception as e:
            log.warning("could not record reachability: %s", e)


class RoleReconciler:
    """Carries out demotions (spec says worker, node still a Raft member)."""

    def __init__(self, store: Store, raft: RaftNode) -> None:
        self._store = store
        self._raft = raft

    async def run(self) -> None:
        async with contextlib.aclosing(self._store.changes(("nodes",))) as changes:
            async for _ in changes:
                for node in self._store.view(manager_nodes):
                    if node.role == "worker":
                        await self._demote(node)

    async def _demote(self, node: Node) -> None:
        raft_id = int((node.manager_status or {}).get("RaftID", 0))
        if raft_id == self._raft.id:
            others = [n for n in self._store.view(manager_nodes) if n.id != node.id and n.role == "manager"]
            target = next((int((n.manager_status or {})["RaftID"]) for n in others
                           if (n.manager_status or {}).get("Reachability") == "reachable"), 0)
            if target:
                log.info("handing leadership over before demoting self", extra={"to": target})
                self._raft.transfer_leadership(target)
            return  # the next leader finishes the demotion
        try:
            await _remove_manager(self._store, self._raft, node, demote_spec=False)
        except Exception as e:
            log.warning("demotion of %s failed for now: %s", node.id, e)
