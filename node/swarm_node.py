"""A daemon's membership in a swarm: what runs for the node's role, and what it reports.

Theory of operation: `SwarmNode.run()` is owned by the daemon's supervisor and owns, in one
TaskGroup, whatever the node's role needs: on a manager the cluster-port server and the
ManagerRuntime (Raft, store, leader loops); on every member the Agent. What the node is
lives in `<data-dir>/swarm/` (state.json, certificates, raft/), written before the components
start, so a restarted daemon comes back as what it was with no manual step.

The transitions live beside this module, each a function of the node taken under its lock:
`bootstrap` (init, force-new-cluster), `joining` (join, leave) and `roles` (promotion,
demotion, certificate renewal).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aio import cancel_and_wait
from ca.node_tls import NodeCredentials, peer_identity
from engineapi.http import ApiError
from manager.store import Store
from manager.swarm.runtime import LeaderLoopFactory, ManagerRuntime
from node import bootstrap, joining, roles
from node.addresses import split_host_port
from node.state import LocalSwarmState
from raft.node import RaftNode
from rpc.server import RpcServer
from worker.agent.agent import Agent
from worker.agent.dependencies import Dependencies
from worker.agent.logs import ContainerLogs
from worker.exec import TaskExecutor

log = logging.getLogger("shoal.swarm")

STARTUP_TIMEOUT = 15.0


class SwarmNode:
    def __init__(self, data_dir: Path, *, listen_addr: str, advertise_addr: str, hostname: str,
                 executor: TaskExecutor, description: Callable[[], dict[str, Any]],
                 leader_loops: list[LeaderLoopFactory], logs: ContainerLogs | None = None,
                 dependencies: Dependencies | None = None) -> None:
        self.data_dir = data_dir
        self.default_listen = listen_addr
        self.default_advertise = advertise_addr
        self.hostname = hostname
        self._executor = executor
        self.description = description
        self._leader_loops = leader_loops
        self._logs = logs
        self._dependencies = dependencies   # secrets and configs, shared with the executor
        self.state: LocalSwarmState | None = LocalSwarmState.load(data_dir)
        self.creds: NodeCredentials | None = None
        self.runtime: ManagerRuntime | None = None
        self.agent: Agent | None = None
        self._components: list[asyncio.Task[Any]] = []
        self._group: asyncio.TaskGroup | None = None
        self.lock = asyncio.Lock()          # one transition at a time
        self.wanted_role: tuple[str, bool] | None = None   # (role, in Raft) as the cluster reports it
        self.role_wakeup = asyncio.Event()
        self._client_ctx: ssl.SSLContext | None = None
        self.error = ""

    @property
    def certs_dir(self) -> Path:
        return LocalSwarmState.certs_dir(self.data_dir)

    # ---- lifetime -----------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            if self.state is not None:
                async with self.lock:
                    await self.start_components(bootstrap=False)
            group.create_task(roles.renewal_loop(self), name="cert-renewal")
            group.create_task(roles.role_loop(self), name="role-changes")
            try:
                await asyncio.Future()
            finally:
                await self.stop_components()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        assert self._group is not None, "SwarmNode.run() is not running"
        task = self._group.create_task(coro, name=name)
        self._components.append(task)
        return task

    async def stop_components(self) -> None:
        """Stop the role's components, newest first."""
        components, self._components = self._components, []
        for task in reversed(components):
            await cancel_and_wait([task])
        self.runtime, self.agent = None, None

    def client_context(self) -> ssl.SSLContext:
        if self._client_ctx is None:
            assert self.creds is not None
            self._client_ctx = self.creds.client_context(self.certs_dir)
        return self._client_ctx

    def set_credentials(self, creds: NodeCredentials | None) -> None:
        self.creds = creds
        self._client_ctx = None

    async def start_components(self, bootstrap: bool, members: dict[int, str] | None = None) -> None:
        state = self.state
        assert state is not None
        self.set_credentials(NodeCredentials.load(self.certs_dir))
        if self.creds is None:
            raise ApiError(500, f"swarm state without certificates in {self.certs_dir}")
        if state.role == "manager":
            await self.start_manager(bootstrap, members or {})
        self.start_agent()

    def start_agent(self) -> None:
        state = self.state
        assert state is not None
        self.agent = Agent(state.node_id, state.managers or [state.advertise_addr], self.client_context,
                           self._executor, self.description, split_host_port(state.advertise_addr)[0],
                           on_managers=self._on_managers, on_node=self._on_node, logs=self._logs,
                           dependencies=self._dependencies)
        self._spawn(self.agent.run(), "agent")

    async def start_manager(self, bootstrap: bool, members: dict[int, str]) -> None:
        """Bind the cluster port (a bind error is the caller's ApiError, and nothing is left
        running), then start the server and the manager runtime and wait until Raft runs."""
        state, creds = self.state, self.creds
        assert state is not None and creds is not None
        server = RpcServer(creds.server_context(self.certs_dir), identify=peer_identity)
        host, port = split_host_port(state.listen_addr)
        try:
            await server.listen(host, port)
        except OSError as e:
            raise ApiError(400, f"listen tcp {host}:{port}: bind: {e.strerror or e}") from None
        self.runtime = ManagerRuntime(
            raft_id=state.raft_id, advertise_addr=state.advertise_addr,
            raft_dir=LocalSwarmState.raft_dir(self.data_dir), server=server, client_ssl=self.client_context,
            members=members, bootstrap=bootstrap, leader_loops=self._leader_loops)
        self._spawn(server.serve(), "cluster-port")
        self._spawn(self.runtime.run(), "manager")
        await asyncio.wait_for(self.runtime.ready.wait(), STARTUP_TIMEOUT)

    async def until_leader(self, what: str) -> ManagerRuntime:
        """Wait (bounded) until this manager leads; the runtime once it does."""
        runtime = self.runtime
        assert runtime is not None
        raft: RaftNode = runtime.raft
        try:
            await raft.wait_until(lambda: raft.is_leader, timeout=STARTUP_TIMEOUT)
        except TimeoutError:
            raise ApiError(503, f"timed out waiting for {what}") from None
        return runtime

    def _on_managers(self, addrs: list[str]) -> None:
        if self.state is not None and sorted(addrs) != sorted(self.state.managers):
            self.state.managers = list(addrs)
            self.state.save(self.data_dir)

    def _on_node(self, message: dict[str, Any]) -> None:
        """What the cluster says this node should be; the role loop acts on it."""
        self.wanted_role = (str(message.get("role")), bool(message.get("raft_member")))
        self.role_wakeup.set()

    async def forget(self) -> None:
        """Drop every trace of swarm membership on this node."""
        await self.stop_components()
        self.state = None
        self.set_credentials(None)
        shutil.rmtree(self.data_dir / "swarm", ignore_errors=True)

    # ---- the transitions the API drives (SwarmControl) -----------------------------------------
    async def init(self, request: dict[str, Any]) -> str:
        async with self.lock:
            if request.get("ForceNewCluster"):
                return await bootstrap.force_new_cluster(self)
            return await bootstrap.init(self, request)

    async def join(self, request: dict[str, Any]) -> None:
        async with self.lock:
            await joining.join(self, request)

    async def leave(self, force: bool) -> None:
        async with self.lock:
            await joining.leave(self, force)

    # ---- info for the API ---------------------------------------------------------------------
    def manager_store(self) -> Store | None:
        if self.state is None or self.state.role != "manager" or self.runtime is None:
            return None
        return self.runtime.store

    def is_worker(self) -> bool:
        return self.state is not None and self.state.role == "worker"

    def local_node_id(self) -> str:
        return self.state.node_id if self.state else ""

    def leader_node_id(self) -> str:
        return self.runtime.leader_node_id() if self.runtime else ""

    async def read_barrier(self) -> None:
        if self.runtime is not None:
            await self.runtime.read_barrier()

    def swarm_state(self) -> str:
        if self.state is None:
            return "inactive"
        return f"active/{self.state.role}"

    def swarm_info(self) -> dict[str, Any]:
        if self.state is None:
            return {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                    "Error": self.error, "RemoteManagers": None}
        info: dict[str, Any] = {
            "NodeID": self.state.node_id, "NodeAddr": split_host_port(self.state.advertise_addr)[0],
            "LocalNodeState": "active", "ControlAvailable": self.state.role == "manager", "Error": self.error,
            "RemoteManagers": [{"NodeID": "", "Addr": a} for a in self.state.managers],
        }
        store = self.manager_store()
        if store is not None:
            nodes = store.view(lambda tx: tx.all("nodes"))
            clusters = store.view(lambda tx: tx.all("clusters"))
            managers = [n for n in nodes if n.manager_status]
            info["Nodes"] = len(nodes)
            info["Managers"] = len(managers)
            info["RemoteManagers"] = [{"NodeID": n.id, "Addr": n.manager_status["Addr"]} for n in managers]
            info["Cluster"] = clusters[0].to_api(include_join_tokens=False) if clusters else None
        return info
