"""A manager's runtime: Raft, the replicated store, the cluster-port services, and the
leader-only loops.

Theory of operation: every manager runs a RaftNode whose state machine is the store, and
serves `ca.*`, `raft.*`, `dispatcher.*` and `logs.*` on the cluster port, plus the `raft` channel that
carries Raft's own messages. Leadership is watched; each leadership term is one TaskGroup that
owns the dispatcher, the log broker and every reconciler, and losing leadership cancels it. Before a term's
loops start, the new leader confirms its read index, so they begin from every committed write.
Stopping (cancelling `run`) closes the peer connections, stops Raft (its log is closed there) and
unregisters the services; that cleanup runs to its end even if the stop is repeated meanwhile.

Removed from Raft (raft/removal.py: demoted, or left out of a forced new cluster, while this manager
was down or cut off): `removed` is the reason, logged once as a warning. Raft keeps running, so the
node can still hear that it was added back, but it never campaigns, so the managers see no election
from it; the CA serves nothing from its stopped store, and the node reports the reason instead of
cluster state (node/swarm_node.py). The swarm's usual path then makes it a worker: the dispatcher
tells its agent that its role is worker and it is out of Raft, and node/roles.py demotes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from aio import Backoff, cancel_and_wait
from manager.dispatcher import Dispatcher
from manager.dispatcher.rpc import register_dispatcher
from manager.logbroker import LogBroker
from manager.logbroker.rpc import register_logs
from manager.metrics import ManagerMetrics, TimedProposer
from manager.store import Store
from manager.swarm.ca_service import CAService
from manager.swarm.membership import (
    MembershipService,
    ReachabilityMonitor,
    RoleReconciler,
    manager_nodes,
    node_of_raft_id,
)
from manager.swarm.raft_glue import NO_LEADER, NoQuorum, RaftProposer, StoreStateMachine
from raft.node import Member, NodeOptions, NodeStopped, RaftNode
from raft.transport import parse_address
from raft.types import NotLeader
from rpc.client import RpcClient
from rpc.server import Access, RpcServer

log = logging.getLogger("shoal.manager")

RAFT_CHANNEL_HELLO = {"channel": "raft"}
READ_TIMEOUT = 4.0
TERM_RESTART_FIRST = 0.1     # seconds before a crashed leadership term starts again, doubling
TERM_RESTART_CEILING = 5.0
REMOVED = ("this manager was removed from the raft cluster: it takes no part in elections and serves no"
           " cluster state; it becomes a worker once the swarm tells it so (or leave the swarm and join again)")


class LeaderLoop(Protocol):
    async def run(self) -> None: ...


LeaderLoopFactory = Callable[[Store], LeaderLoop]


class PeerClients:
    """One RPC connection per manager address, reopened when it drops."""

    def __init__(self, ssl_context: Callable[[], ssl.SSLContext]) -> None:
        self._ssl_context = ssl_context
        self._clients: dict[str, RpcClient] = {}
        self._lock = asyncio.Lock()

    async def get(self, addr: str) -> RpcClient:
        async with self._lock:
            client = self._clients.get(addr)
            if client is None or not client.connected:
                client = await RpcClient(addr, self._ssl_context(), connect_timeout=2).connect()
                self._clients[addr] = client
            return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


class ManagerRuntime:
    def __init__(self, *, raft_id: int, advertise_addr: str, raft_dir: Path, server: RpcServer,
                 client_ssl: Callable[[], ssl.SSLContext], members: dict[int, str], bootstrap: bool,
                 leader_loops: list[LeaderLoopFactory], options: NodeOptions | None = None,
                 metrics: ManagerMetrics | None = None) -> None:
        self.peers = PeerClients(client_ssl)
        self.proposer = RaftProposer(self._forward_proposal)
        self.metrics = metrics
        self.store = Store(proposer=self.proposer if metrics is None
                           else TimedProposer(self.proposer, metrics.proposal_seconds))
        opts = options or NodeOptions()
        if metrics is not None:
            metrics.instrument_raft(opts)
        opts.client_ssl = client_ssl()
        opts.external_listener = True
        opts.dial_preamble = _preamble()
        raft_members = {i: Member(parse_address(a)) for i, a in members.items()}
        raft_members[raft_id] = Member(parse_address(advertise_addr))
        self.raft = RaftNode(raft_id, str(raft_dir), StoreStateMachine(self.store), members=raft_members,
                             bootstrap=bootstrap, options=opts)
        self.proposer.raft = self.raft
        self.dispatcher: Dispatcher | None = None
        self.logbroker: LogBroker | None = None
        self._leader_loops = leader_loops
        self._server = server
        self.ready = asyncio.Event()
        CAService(self.store, lambda: REMOVED if self.removed else "").register(server)
        MembershipService(self.store, lambda: self.raft, self.leader_addr).register(server)
        register_dispatcher(server, lambda: self.dispatcher, self.leader_addr)
        register_logs(server, lambda: self.logbroker, self.leader_addr)
        server.register_channel("raft", self._raft_channel, Access.MANAGER)

    async def _raft_channel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any) -> None:
        await self.raft.transport.serve_connection(reader, writer)

    # ---- membership ----------------------------------------------------------------------------
    @property
    def removed(self) -> bool:
        """Raft says a committed configuration excludes this manager (see the module's docstring)."""
        return self.raft.removed

    def raft_info(self) -> dict[str, Any]:
        """This manager's Raft, for /info: its ID, term, the leader it knows, and whether it was removed."""
        return {"RaftID": self.raft.id, "Term": self.raft.hard_state().term if self.raft.core else 0,
                "Leader": self.raft.leader, "Removed": self.removed}

    async def _watch_removal(self) -> None:
        """Log when this manager learns it was removed from Raft (and should it be added back)."""
        raft = self.raft
        try:
            while True:
                await raft.wait_until(lambda: raft.removed)
                log.warning(REMOVED, extra={"raft_id": raft.id})
                await raft.wait_until(lambda: not raft.removed)
                log.info("this manager is a member of the raft cluster again", extra={"raft_id": raft.id})
        except NodeStopped:
            return

    # ---- leadership -----------------------------------------------------------------------------
    def leader_addr(self) -> str:
        leader = self.raft.leader
        if not leader:
            return ""
        member = self.raft.members.get(leader)
        return f"{member.raft[0]}:{member.raft[1]}" if member else ""

    def leader_node_id(self) -> str:
        leader = self.raft.leader
        if not leader:
            return ""
        node = self.store.view(lambda tx: node_of_raft_id(tx, leader))
        return node.id if node else ""

    async def read_barrier(self) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):   # not wait_for: on 3.11 it can swallow a cancel
                await self.raft.read_index()
        except (NotLeader, TimeoutError, NodeStopped):
            raise NoQuorum(NO_LEADER) from None

    async def _forward_proposal(self, leader: int, data: bytes) -> int:
        member = self.raft.members.get(leader)
        if member is None:
            raise ConnectionError(f"no address for leader {leader}")
        client = await self.peers.get(f"{member.raft[0]}:{member.raft[1]}")
        reply = await client.call("raft.propose", {"data": data}, timeout=10)
        return int(reply["index"])

    async def run(self) -> None:
        await self.raft.start()
        self.ready.set()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._sync_addresses(), name="raft-address-book")
                group.create_task(self._watch_removal(), name="raft-removal")
                group.create_task(self._leadership(), name="leadership")
        finally:
            self.dispatcher = None
            self.logbroker = None
            await _to_the_end(self._close())

    async def _close(self) -> None:
        try:
            await self.peers.close()
            await self.raft.stop()
        finally:
            self._server.unregister_prefix("raft.")
            self._server.unregister_prefix("ca.")
            self._server.unregister_prefix("dispatcher.")
            self._server.unregister_prefix("logs.")

    async def _leadership(self) -> None:
        """One term at a time while this node leads. A term that crashes is logged with its
        traceback and started again after a growing delay, as long as the node still leads."""
        backoff = Backoff(first=TERM_RESTART_FIRST, ceiling=TERM_RESTART_CEILING)
        raft = self.raft
        try:
            while True:
                await raft.wait_until(lambda: raft.is_leader)
                term = asyncio.create_task(self._term(), name="leader-term")
                lost = asyncio.create_task(raft.wait_until(lambda: not raft.is_leader), name="leadership-lost")
                try:
                    await asyncio.wait({term, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    errors = await cancel_and_wait([term, lost])
                term_error = next((e for e in errors if not isinstance(e, NodeStopped)), None)
                if term_error is None:
                    backoff.reset()
                    continue
                if not raft.is_leader:
                    log.info("leadership term ended with %r after leadership moved", term_error)
                    continue
                delay = backoff.next_delay()
                log.error("leadership term crashed; restarting in %.2fs", delay, exc_info=term_error)
                with contextlib.suppress(TimeoutError):   # leadership lost while waiting: no restart
                    await raft.wait_until(lambda: not raft.is_leader, timeout=delay)
        except NodeStopped:
            log.warning("raft stopped; this manager no longer takes part in leadership")

    async def _sync_addresses(self) -> None:
        """Keep Raft's address book in step with the managers' addresses in the store, so a
        restarted manager can reach members it only knows by ID from its log."""
        async with contextlib.aclosing(self.store.changes(("nodes",))) as changes:
            async for _ in changes:
                for node in self.store.view(manager_nodes):
                    status = node.manager_status or {}
                    raft_id, addr = int(status.get("RaftID", 0)), str(status.get("Addr", ""))
                    member = self.raft.members.get(raft_id)
                    if raft_id and addr and raft_id != self.raft.id and (
                            member is None or f"{member.raft[0]}:{member.raft[1]}" != addr):
                        self.raft.update_address(raft_id, parse_address(addr))

    async def _term(self) -> None:
        await self.raft.read_index()
        log.info("leadership term starts", extra={"raft_id": self.raft.id})
        dispatcher = Dispatcher(self.store, on_heartbeat_miss=self.metrics.heartbeat_missed if self.metrics else None)
        logbroker = LogBroker(self.store, dispatcher)
        try:
            async with asyncio.TaskGroup() as group:
                self.dispatcher = dispatcher
                self.logbroker = logbroker
                group.create_task(dispatcher.run(), name="dispatcher")
                group.create_task(logbroker.run(), name="logbroker")
                group.create_task(ReachabilityMonitor(self.store, self.raft).run(), name="reachability")
                group.create_task(RoleReconciler(self.store, self.raft).run(), name="roles")
                for factory in self._leader_loops:
                    loop = factory(self.store)
                    group.create_task(loop.run(), name=type(loop).__name__)
        finally:
            self.dispatcher = None
            self.logbroker = None
            log.info("leadership term ends", extra={"raft_id": self.raft.id})


async def _to_the_end(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run `cleanup` to its end even if the caller is cancelled (again) meanwhile; a cancellation
    that arrived is raised once it is done. Bounded by the cleanup's own bounds (Raft's stop)."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("stopping the manager failed", exc_info=error)
        raise asyncio.CancelledError()
    task.result()


def _preamble() -> bytes:
    from rpc.frames import encode

    return encode(RAFT_CHANNEL_HELLO)
