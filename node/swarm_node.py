"""A daemon's membership in a swarm: init, join, leave, role changes, certificate renewal.

Theory of operation: `SwarmNode.run()` is owned by the daemon's supervisor and owns, in one
TaskGroup, whatever the node's role needs: on a manager the cluster-port server and the
ManagerRuntime (Raft, store, leader loops); on every member the Agent. What the node is
lives in `<data-dir>/swarm/` (state.json, certificates, raft/), written before the components
start, so a restarted daemon comes back as what it was with no manual step.

Role changes are driven from the cluster state the agent's session reports about this node:
- promoted (spec says manager, not yet in Raft): renew the certificate as a manager, start the
  server and a Raft node with no state, and ask the leader to add it (`raft.join`);
- demoted (spec says worker and the leader has taken it out of Raft): stop the manager parts,
  drop the Raft state and renew the certificate as a worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ca import tokens
from ca.authority import NodeIdentity, RootCA, key_pem, make_csr, new_key
from ca.node_tls import NodeCredentials, peer_identity
from engineapi.http import ApiError
from manager.specs import default_swarm_spec, normalize_swarm_spec
from manager.store import Store, WriteTx
from manager.swarm.ca_service import cert_expiry
from manager.swarm.raft_glue import StoreStateMachine
from manager.swarm.runtime import LeaderLoopFactory, ManagerRuntime
from model import Cluster, Node, new_id
from node.addresses import AddressError, choose_advertise, split_host_port
from node.remote import pem_bytes, renew_certificate, request_membership
from node.state import LocalSwarmState
from node.swarm_api import ALREADY_IN_SWARM, MANAGER_LEAVE, NOT_PART_OF_SWARM
from raft.recovery import replay_log
from rpc.client import RpcClient
from rpc.errors import NotLeaderError, RpcError
from rpc.server import RpcServer
from worker.agent.agent import Agent
from worker.agent.dependencies import Dependencies
from worker.agent.logs import ContainerLogs
from worker.agent.task_runner import TaskExecutor

log = logging.getLogger("shoal.swarm")

RENEW_CHECK_INTERVAL = 60.0
ROLE_RETRY_INTERVAL = 1.0
STARTUP_TIMEOUT = 15.0


class SwarmNode:
    def __init__(self, data_dir: Path, *, listen_addr: str, advertise_addr: str, hostname: str,
                 executor: TaskExecutor, description: Callable[[], dict[str, Any]],
                 leader_loops: list[LeaderLoopFactory], logs: ContainerLogs | None = None,
                 dependencies: Dependencies | None = None) -> None:
        self.data_dir = data_dir
        self._default_listen = listen_addr
        self._default_advertise = advertise_addr
        self.hostname = hostname
        self._executor = executor
        self._description = description
        self._leader_loops = leader_loops
        self._logs = logs
        self._dependencies = dependencies   # secrets and configs, shared with the executor
        self.state: LocalSwarmState | None = LocalSwarmState.load(data_dir)
        self.creds: NodeCredentials | None = None
        self.runtime: ManagerRuntime | None = None
        self.agent: Agent | None = None
        self._server: RpcServer | None = None
        self._components: list[asyncio.Task[Any]] = []
        self._group: asyncio.TaskGroup | None = None
        self._lock = asyncio.Lock()
        self._wanted_role: tuple[str, bool] | None = None   # (role, in Raft) as the cluster reports it
        self._role_wakeup = asyncio.Event()
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
                async with self._lock:
                    await self._start_components(bootstrap=False)
            group.create_task(self._renewal_loop(), name="cert-renewal")
            group.create_task(self._role_loop(), name="role-changes")
            try:
                await asyncio.Future()
            finally:
                await self._stop_components()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        assert self._group is not None, "SwarmNode.run() is not running"
        task = self._group.create_task(coro, name=name)
        self._components.append(task)
        return task

    async def _stop_components(self) -> None:
        for task in reversed(self._components):
            task.cancel()
        for task in reversed(self._components):
            await asyncio.gather(task, return_exceptions=True)  # never swallows our own cancellation
        self._components.clear()
        self.runtime, self.agent, self._server = None, None, None

    def client_context(self) -> ssl.SSLContext:
        if self._client_ctx is None:
            assert self.creds is not None
            self._client_ctx = self.creds.client_context(self.certs_dir)
        return self._client_ctx

    async def _start_components(self, bootstrap: bool, members: dict[int, str] | None = None) -> None:
        state = self.state
        assert state is not None
        self.creds = NodeCredentials.load(self.certs_dir)
        if self.creds is None:
            raise ApiError(500, f"swarm state without certificates in {self.certs_dir}")
        self._client_ctx = None
        if state.role == "manager":
            await self._start_manager(bootstrap, members or {})
        self._start_agent()

    def _start_agent(self) -> None:
        state = self.state
        assert state is not None
        self.agent = Agent(state.node_id, state.managers or [state.advertise_addr], self.client_context,
                           self._executor, self._description, split_host_port(state.advertise_addr)[0],
                           on_managers=self._on_managers, on_node=self._on_node, logs=self._logs,
                           dependencies=self._dependencies)
        self._spawn(self.agent.run(), "agent")

    async def _start_manager(self, bootstrap: bool, members: dict[int, str]) -> None:
        state, creds = self.state, self.creds
        assert state is not None and creds is not None
        server = RpcServer(creds.server_context(self.certs_dir), identify=peer_identity)
        host, port = split_host_port(state.listen_addr)
        ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self._server = server
        self.runtime = ManagerRuntime(
            raft_id=state.raft_id, advertise_addr=state.advertise_addr,
            raft_dir=LocalSwarmState.raft_dir(self.data_dir), server=server, client_ssl=self.client_context,
            members=members, bootstrap=bootstrap, leader_loops=self._leader_loops)
        serve = self._spawn(server.serve(host, port, ready), "cluster-port")
        await asyncio.wait({ready, serve}, return_when=asyncio.FIRST_COMPLETED)
        if serve.done():
            serve.result()  # raises the bind error
        self._spawn(self.runtime.run(), "manager")
        await asyncio.wait_for(self.runtime.ready.wait(), STARTUP_TIMEOUT)

    def _on_managers(self, addrs: list[str]) -> None:
        if self.state is not None and sorted(addrs) != sorted(self.state.managers):
            self.state.managers = list(addrs)
            self.state.save(self.data_dir)

    def _on_node(self, message: dict[str, Any]) -> None:
        """What the cluster says this node should be; the role loop acts on it."""
        self._wanted_role = (str(message.get("role")), bool(message.get("raft_member")))
        self._role_wakeup.set()

    def _role_change_needed(self) -> str | None:
        if self.state is None or self._wanted_role is None:
            return None
        role, member = self._wanted_role
        if role == "manager" and self.state.role == "worker":
            return "manager"
        if role == "worker" and self.state.role == "manager" and not member:
            return "worker"  # only once the leader has taken this node out of Raft
        if role == "manager" and self.state.role == "manager" and not member and self.runtime is not None:
            return "raft"  # a manager whose Raft join did not complete yet
        return None

    async def _role_loop(self) -> None:
        """Level-triggered: whenever this node's role differs from what the cluster wants, change
        it; a failed attempt is retried until it succeeds or the wish changes."""
        while True:
            await self._role_wakeup.wait()
            self._role_wakeup.clear()
            while (target := self._role_change_needed()) is not None:
                done = await (self._retry_raft_join() if target == "raft" else self._change_role(target))
                if done:
                    self._wanted_role = None  # the new session will report afresh
                    break
                await asyncio.sleep(ROLE_RETRY_INTERVAL)

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

    # ---- init ---------------------------------------------------------------------------------
    async def init(self, request: dict[str, Any]) -> str:
        async with self._lock:
            if request.get("ForceNewCluster"):
                return await self._force_new_cluster()
            if self.state is not None:
                raise ApiError(503, ALREADY_IN_SWARM)
            listen, advertise = self._addresses(request)
            node_id, cluster_id = new_id(), new_id()
            ca = RootCA.create(cluster_id)
            spec = normalize_swarm_spec(request.get("Spec"), base=default_swarm_spec())
            key = new_key()
            cluster = Cluster(id=cluster_id, spec=spec)
            cert = ca.issue(make_csr(key), NodeIdentity(node_id, "manager", cluster_id),
                            expiry=cert_expiry(cluster))
            NodeCredentials(ca.cert_pem, cert, key_pem(key), key_pem(ca.key) if ca.key else None).save(self.certs_dir)
            raft_id = _new_raft_id()
            self.state = LocalSwarmState(node_id=node_id, cluster_id=cluster_id, role="manager",
                                         advertise_addr=advertise, listen_addr=listen, managers=[advertise],
                                         raft_id=raft_id)
            try:
                await self._start_manager_first(ca, cluster, request)
            except BaseException:
                await self._forget()
                raise
            log.info("swarm initialised", extra={"node": node_id, "advertise": advertise})
            return node_id

    async def _start_manager_first(self, ca: RootCA, cluster: Cluster, request: dict[str, Any]) -> None:
        state = self.state
        assert state is not None
        state.save(self.data_dir)
        self.creds = NodeCredentials.load(self.certs_dir)
        await self._start_manager(bootstrap=True, members={})
        runtime = self.runtime
        assert runtime is not None
        await _until(lambda: runtime.raft.is_leader, STARTUP_TIMEOUT, "the first manager to become leader")
        ca_der = ca.cert.public_bytes(serialization.Encoding.DER)
        cluster.join_tokens = {"Worker": tokens.make_token(ca_der), "Manager": tokens.make_token(ca_der)}
        cluster.tls_info = ca.tls_info()
        cluster.root_ca = {"Cert": ca.cert_pem.decode(), "Key": key_pem(ca.key).decode() if ca.key else ""}
        if request.get("DefaultAddrPool"):
            cluster.default_addr_pool = list(request["DefaultAddrPool"])
        if request.get("SubnetSize"):
            cluster.subnet_size = int(request["SubnetSize"])
        if request.get("DataPathPort"):
            cluster.data_path_port = int(request["DataPathPort"])
        availability = request.get("Availability") or "active"
        me = Node(id=state.node_id, spec={"Labels": {}, "Role": "manager", "Availability": availability},
                  description=self._description(),
                  status={"State": "ready", "Message": "", "Addr": split_host_port(state.advertise_addr)[0]},
                  manager_status={"RaftID": state.raft_id, "Addr": state.advertise_addr, "Reachability": "reachable"})

        def seed(tx: WriteTx) -> None:
            tx.create(cluster)
            tx.create(me)

        await runtime.store.update(seed)
        self._start_agent()

    async def _force_new_cluster(self) -> str:
        """Recover a manager that lost quorum: keep the state it has committed and make it the
        only manager of a new Raft cluster. The old Raft data is kept aside, never deleted; the
        other managers become workers (they may be promoted again)."""
        state = self.state
        if state is None or state.role != "manager":
            raise ApiError(400, "--force-new-cluster needs this node to be a manager of an existing swarm")
        await self._stop_components()
        raft_dir = LocalSwarmState.raft_dir(self.data_dir)
        recovered = Store()
        await asyncio.to_thread(replay_log, str(raft_dir), StoreStateMachine(recovered))
        snapshot = recovered.snapshot()
        raft_dir.rename(raft_dir.with_name(f"raft.before-force-new-cluster.{int(time.time())}"))
        state.managers = [state.advertise_addr]
        state.save(self.data_dir)
        self.creds = NodeCredentials.load(self.certs_dir)
        self._client_ctx = None
        await self._start_manager(bootstrap=True, members={})
        runtime = self.runtime
        assert runtime is not None
        await _until(lambda: runtime.raft.is_leader, STARTUP_TIMEOUT, "the recovered manager to become leader")
        await runtime.store.reset(snapshot)

        def sole_manager(tx: WriteTx) -> None:
            for node in tx.all("nodes"):
                if node.id == state.node_id:
                    node = node.copy()
                    node.manager_status = {"RaftID": state.raft_id, "Addr": state.advertise_addr,
                                           "Reachability": "reachable"}
                    tx.update(node)
                elif node.manager_status is not None or node.role == "manager":
                    node = node.copy()
                    node.manager_status = None
                    node.spec = {**node.spec, "Role": "worker"}
                    tx.update(node)

        await runtime.store.update(sole_manager)
        self._start_agent()
        log.info("forced a new cluster", extra={"node": state.node_id})
        return state.node_id

    def _addresses(self, request: dict[str, Any]) -> tuple[str, str]:
        try:
            listen_host, listen_port = split_host_port(str(request.get("ListenAddr") or self._default_listen))
            advertise = choose_advertise(str(request.get("AdvertiseAddr") or ""), self._default_advertise,
                                         f"{listen_host}:{listen_port}")
        except AddressError as e:
            raise ApiError(400, str(e)) from None
        return f"{listen_host}:{listen_port}", advertise

    # ---- join ---------------------------------------------------------------------------------
    async def join(self, request: dict[str, Any]) -> None:
        async with self._lock:
            if self.state is not None:
                raise ApiError(503, ALREADY_IN_SWARM)
            try:
                token = tokens.parse_token(str(request["JoinToken"]))
            except tokens.TokenError as e:
                raise ApiError(400, str(e)) from None
            listen, advertise = self._addresses(request)
            errors = []
            for remote in request["RemoteAddrs"]:
                try:
                    reply, key = await request_membership(
                        str(remote), token, self._description(), str(request.get("Availability") or "active"))
                    break
                except ApiError:
                    raise
                except (RpcError, OSError, ssl.SSLError) as e:
                    errors.append(f"{remote}: {e}")
            else:
                raise ApiError(503, "could not join the swarm: no manager could be reached (" + "; ".join(errors) + ")")
            NodeCredentials(pem_bytes(reply["root"]), pem_bytes(reply["cert"]), key_pem(key)).save(self.certs_dir)
            role = str(reply["role"])
            self.state = LocalSwarmState(node_id=str(reply["node_id"]), cluster_id=str(reply["cluster_id"]),
                                         role=role, advertise_addr=advertise, listen_addr=listen,
                                         managers=list(reply.get("managers") or request["RemoteAddrs"]),
                                         raft_id=_new_raft_id() if role == "manager" else 0)
            self.state.save(self.data_dir)
            try:
                await self._start_components(bootstrap=False)
                if role == "manager":
                    await self._join_raft()
            except BaseException:
                await self._forget()
                raise
            log.info("joined swarm", extra={"node": self.state.node_id, "role": role})

    async def _join_raft(self) -> None:
        """Ask the leader to add this manager to Raft; follow redirects until it answers."""
        state, runtime = self.state, self.runtime
        assert state is not None and runtime is not None
        candidates = [m for m in state.managers if m != state.advertise_addr]
        deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT
        last_error = "no manager known"
        while asyncio.get_running_loop().time() < deadline:
            for addr in list(candidates):
                try:
                    async with RpcClient(addr, self.client_context(), connect_timeout=3) as client:
                        # Learn the members' addresses first: the leader replicates to us before
                        # `raft.join` returns, and we must be able to answer it.
                        known = await client.call("raft.members", {}, timeout=5)
                        self._learn_members(known["members"])
                        reply = await client.call("raft.join", {"raft_id": state.raft_id,
                                                                "addr": state.advertise_addr}, timeout=40)
                    self._learn_members(reply["members"])
                    return
                except NotLeaderError as e:
                    leader = str(e.details.get("leader_addr") or "")
                    if leader and leader not in candidates:
                        candidates.insert(0, leader)
                    last_error = f"{addr}: not the leader"
                except (RpcError, OSError, ssl.SSLError) as e:
                    last_error = f"{addr}: {e}"
            await asyncio.sleep(0.2)
        raise ApiError(503, f"could not join Raft as a manager: {last_error}")

    def _learn_members(self, members: dict[str, str]) -> None:
        state, runtime = self.state, self.runtime
        assert state is not None and runtime is not None
        for raft_id, member_addr in members.items():
            if int(raft_id) != state.raft_id:
                runtime.raft.update_address(int(raft_id), _addr_tuple(member_addr))

    # ---- leave --------------------------------------------------------------------------------
    async def leave(self, force: bool) -> None:
        async with self._lock:
            state = self.state
            if state is None:
                raise ApiError(503, NOT_PART_OF_SWARM)
            if state.role == "manager" and self.runtime is not None:
                store = self.runtime.store
                managers = store.view(lambda tx: [n for n in tx.all("nodes") if n.manager_status])
                if len(managers) <= 1 and not force:
                    raise ApiError(503, MANAGER_LEAVE)
                reachable = [n for n in managers if n.id != state.node_id and (
                    n.manager_status or {}).get("Reachability") == "reachable"]
                remaining = len(managers) - 1
                if remaining and len(reachable) <= remaining // 2 and not force:
                    raise ApiError(503, f"You are attempting to leave the swarm on a node that is participating "
                                        f"as a manager. Removing this node leaves {len(reachable)} managers out of "
                                        f"{remaining}. Without a Raft quorum your swarm will be inaccessible. Use "
                                        "`--force` to suppress this message.")
                if len(managers) > 1:
                    await self._leave_raft(force)
            await self._stop_components()
            await self._forget()

    async def _leave_raft(self, force: bool) -> None:
        runtime = self.runtime
        assert runtime is not None
        if runtime.raft.is_leader:
            others = [m for m in runtime.raft.members if m != runtime.raft.id]
            if others:
                runtime.raft.transfer_leadership(random.choice(others))
                await _until(lambda: bool(runtime.raft.leader) and not runtime.raft.is_leader, 5,
                             "leadership to move", fail=False)
        for _ in range(30):
            addr = runtime.leader_addr()
            if addr and not runtime.raft.is_leader:
                try:
                    async with RpcClient(addr, self.client_context(), connect_timeout=3) as client:
                        await client.call("raft.leave", {}, timeout=10)
                    return
                except RpcError as e:
                    log.info("raft.leave: %s", e)
            await asyncio.sleep(0.2)
        if not force:
            raise ApiError(503, "could not reach the leader to leave Raft; use --force to leave anyway")

    async def _forget(self) -> None:
        """Drop every trace of swarm membership on this node."""
        await self._stop_components()
        self.state, self.creds, self._client_ctx = None, None, None
        shutil.rmtree(self.data_dir / "swarm", ignore_errors=True)

    # ---- role changes and renewal -------------------------------------------------------------
    async def _retry_raft_join(self) -> bool:
        async with self._lock:
            if self.runtime is None or self.state is None or self.state.role != "manager":
                return True
            try:
                await self._join_raft()
                return True
            except ApiError as e:
                log.warning("joining Raft failed for now: %s", e.message)
                return False

    async def _change_role(self, role: str) -> bool:
        """Become `role`; True when done (or nothing is left to do)."""
        async with self._lock:
            state = self.state
            if state is None or state.role == role:
                return True
            log.info("role change", extra={"from": state.role, "to": role})
            try:
                await self._renew()
                if self.creds is None or self.creds.identity.role != role:
                    return False  # the CA does not see the change yet
                await self._stop_components()
                shutil.rmtree(LocalSwarmState.raft_dir(self.data_dir), ignore_errors=True)
                state.raft_id = _new_raft_id() if role == "manager" else 0
                state.role = role
                state.save(self.data_dir)
                await self._start_components(bootstrap=False)
                if role == "manager":
                    await self._join_raft()
                return True
            except (RpcError, ApiError, OSError) as e:
                log.warning("role change to %s failed for now: %s", role, e)
                return False

    async def _renew(self) -> None:
        state, creds = self.state, self.creds
        if state is None or creds is None:
            return
        renewed = await renew_certificate(state.managers or [state.advertise_addr], self.client_context(), creds)
        if renewed is None:
            return
        renewed.save(self.certs_dir)
        self.creds = renewed
        self._client_ctx = None
        log.info("certificate renewed", extra={"role": renewed.identity.role})

    async def _renewal_loop(self) -> None:
        """Renew the node certificate once half its lifetime has passed, well before expiry."""
        while True:
            creds = self.creds
            interval = 1.0 if creds is None else \
                max(0.5, min(RENEW_CHECK_INTERVAL, creds.lifetime.total_seconds() / 10))
            await asyncio.sleep(interval)
            if self.creds is not None and self.creds.renewal_due():
                async with self._lock:
                    await self._renew()


def _new_raft_id() -> int:
    return int.from_bytes(os.urandom(7), "big") or 1


def _addr_tuple(addr: str) -> tuple[str, int]:
    host, port = split_host_port(addr)
    return host, port


async def _until(check: Callable[[], bool], timeout: float, what: str, fail: bool = True) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() >= deadline:
            if fail:
                raise ApiError(503, f"timed out waiting for {what}")
            return
        await asyncio.sleep(0.05)

