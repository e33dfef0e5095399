"""A daemon's membership in a swarm: what runs for the node's role, and what it reports.

Theory of operation: `SwarmNode.run()` is owned by the daemon's supervisor and owns, in one
TaskGroup, whatever the node's role needs: on a manager the cluster-port server and the
ManagerRuntime (Raft, store, leader loops); on every member the Agent. What the node is
lives in `<data-dir>/swarm/` (state.json, certificates, raft/), written before the components
start, so a restarted daemon comes back as what it was with no manual step.

The transitions live beside this module, each a function of the node taken under its lock:
`bootstrap` (init, force-new-cluster), `joining` (join, leave) and `roles` (promotion,
demotion, certificate renewal). Each either happens or leaves the node as it was; a failure is
the caller's error, never the daemon's end.

Invariants:
- A component that crashes is logged and reported in `error` (the swarm's `Error` in /info); it
  never takes the TaskGroup, and with it the daemon, down. So is a crash of the role or renewal
  loop, which starts again after a growing delay.
- Stopping the components is ordered (newest first) and bounded (`STOP_TIMEOUT` in all). A
  component still running `RECANCEL_AFTER` seconds after its cancel is cancelled again: an
  await below it may have swallowed the first (Python 3.11's `asyncio.wait_for` returns the
  result of an operation that finished in the same turn as the cancel; that is how a leave once
  waited forever for an agent that had just connected). One that outlives the bound is logged
  and abandoned to the TaskGroup; the stop goes on.
- A leave never waits on a transition the node started itself (a role change, a certificate
  renewal): those run as `background` attempts, which a leave cancels before it takes the lock.
- Forgetting the swarm kills and removes the containers of every task the agent ran, as
  Docker does when a node leaves.
- A node whose data key is wrapped by an unlock key (autolock, node/autolock.py) starts locked:
  no component runs until `unlock` is given the key, or the node leaves with --force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aio import Backoff
from ca.authority import CertificateError, node_tls_info
from ca.encryption import InvalidUnlockKey, KeyFileError, WrongUnlockKey, parse_unlock_key
from ca.live_tls import LiveServerContext
from ca.node_tls import NodeCredentials, peer_identity
from engineapi.http import ApiError
from manager.api.cluster import NOT_IN_SWARM, WORKER_NODE
from manager.metrics import ManagerMetrics
from manager.store import Store
from manager.swarm.runtime import REMOVED, LeaderLoopFactory, ManagerRuntime
from node import bootstrap, joining, roles
from node.addresses import split_host_port
from node.autolock import LOCKED, LOCKED_LEAVE, NodeKeys, follow_unlock_key
from node.networking import NodeNetworking
from node.state import LocalSwarmState
from raft.node import NodeOptions, RaftNode
from rpc.server import RpcServer
from worker.agent.agent import Agent, remove_task_containers
from worker.agent.dependencies import Dependencies
from worker.agent.logs import ContainerLogs
from worker.exec import TaskExecutor

log = logging.getLogger("shoal.swarm")

T = TypeVar("T")

STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0            # seconds for all of a role's components to stop
RECANCEL_AFTER = 2.0           # a component still running this long after a cancel is cancelled again
REMOVE_CONTAINERS_TIMEOUT = 20.0   # seconds to kill and remove the task containers of a swarm left
LEAVE_LOCK_TIMEOUT = 60.0      # a leave waits this long at most for an API transition in progress
LOOP_RESTART_FIRST = 1.0       # seconds before a crashed role or renewal loop starts again, doubling
LOOP_RESTART_CEILING = 30.0


class SwarmNode:
    def __init__(self, data_dir: Path, *, listen_addr: str, advertise_addr: str, hostname: str,
                 executor: TaskExecutor, description: Callable[[], dict[str, Any]],
                 leader_loops: list[LeaderLoopFactory], logs: ContainerLogs | None = None,
                 dependencies: Dependencies | None = None, networking: NodeNetworking | None = None,
                 metrics: ManagerMetrics | None = None,
                 task_containers: Callable[[], Awaitable[list[str]]] | None = None) -> None:
        self.data_dir = data_dir
        self.default_listen = listen_addr
        self.default_advertise = advertise_addr
        self.hostname = hostname
        self._executor = executor
        self.description = description
        self._leader_loops = leader_loops
        self._logs = logs
        self._dependencies = dependencies   # secrets and configs, shared with the executor
        self._networking = networking       # the task sandboxes, shared with the executor
        self._metrics = metrics             # the manager's metric hooks, when the daemon serves metrics
        self._task_containers = task_containers   # task IDs of the task containers on this host
        self.state: LocalSwarmState | None = LocalSwarmState.load(data_dir)
        self.creds: NodeCredentials | None = None
        self.keys = NodeKeys(self.certs_dir)   # the data key that encrypts the swarm data at rest
        self.locked = False                     # autolock: the data key waits for the unlock key
        self.runtime: ManagerRuntime | None = None
        self.agent: Agent | None = None
        self._components: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Future[Any]] = set()   # transitions the node started itself
        self._group: asyncio.TaskGroup | None = None
        self.lock = asyncio.Lock()          # one transition at a time
        self.wanted_role: tuple[str, bool] | None = None   # (role, in Raft) as the cluster reports it
        self.wanted_certificate: dict[str, Any] = {}   # the cluster's wish for this node's TLS (roles.py)
        self.server_tls: LiveServerContext | None = None   # the cluster port's TLS, renewed in place
        self.role_wakeup = asyncio.Event()
        # run beside each manager runtime on its store, cancelled with it (GET /events' swarm history)
        self.manager_watchers: list[Callable[[Store], Awaitable[None]]] = []
        self._client_ctx: ssl.SSLContext | None = None
        self.error = ""

    @property
    def certs_dir(self) -> Path:
        return LocalSwarmState.certs_dir(self.data_dir)

    # ---- lifetime -----------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            await self.resume()
            group.create_task(self._keep_running("certificate renewal", roles.renewal_loop), name="cert-renewal")
            group.create_task(self._keep_running("role changes", roles.role_loop), name="role-changes")
            try:
                await asyncio.Future()
            finally:
                await self.stop_components()

    async def resume(self) -> None:
        """What a (re)started daemon does with the swarm state it finds: start the role's
        components, or stay locked when the data key is wrapped (autolock)."""
        if self.state is None:
            return
        async with self.lock:
            try:
                self.locked = not self.keys.load()
                if self.locked:
                    log.warning("the swarm is locked: its data key waits for `swarm unlock`")
                else:
                    await self.start_components(bootstrap=False)
            except Exception as e:   # e.g. its cluster port is taken: the node reports it, may leave
                self.record_failure("starting the swarm components", e)
                await self.stop_components()

    def record_failure(self, what: str, error: BaseException) -> None:
        """A failure the node survives: logged with its traceback, reported as the swarm's Error."""
        log.error("%s failed", what, exc_info=error)
        self.error = f"{what} failed: {error or type(error).__name__}"

    async def _keep_running(self, what: str, loop: Callable[[SwarmNode], Awaitable[None]]) -> None:
        """Run one of the node's own loops; a crash is logged and the loop starts again after a
        growing delay."""
        backoff = Backoff(LOOP_RESTART_FIRST, LOOP_RESTART_CEILING)
        while True:
            try:
                await loop(self)
            except Exception as e:
                self.record_failure(what, e)
            await asyncio.sleep(backoff.next_delay())   # a clock, not a poll: spaces the restarts

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        assert self._group is not None, "SwarmNode.run() is not running"
        task = self._group.create_task(self._component(coro, name), name=name)
        self._components.append(task)
        return task

    async def _component(self, coro: Awaitable[Any], name: str) -> None:
        try:
            await coro
        except Exception as e:   # the node's error, not the daemon's end: the node can still leave
            self.record_failure(f"swarm component {name}", e)

    async def stop_components(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the role's components, newest first, within `timeout` seconds in all (see the
        module's invariants: a component is cancelled again if it keeps running, abandoned if it
        outlives the bound). A component leaves the list once it has stopped, so a stop that is
        itself cancelled half way is finished by the next one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._components:
            task = self._components[-1]
            while not task.done():
                task.cancel()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    log.error("swarm component %s did not stop within %.0fs; abandoned", task.get_name(), timeout)
                    break
                await asyncio.wait({task}, timeout=min(RECANCEL_AFTER, remaining))   # never raises
                if not task.done():
                    log.warning("swarm component %s still runs after its cancel; cancelling it again",
                                task.get_name())
            if task in self._components:
                self._components.remove(task)
        self.runtime, self.agent = None, None

    def client_context(self) -> ssl.SSLContext:
        if self._client_ctx is None:
            assert self.creds is not None
            self._client_ctx = self.creds.client_context(self.certs_dir)
        return self._client_ctx

    def load_credentials(self) -> NodeCredentials | None:
        """The node's TLS credentials from disk, their keys opened with the data key."""
        return NodeCredentials.load(self.certs_dir, self.keys.key_password)

    def set_credentials(self, creds: NodeCredentials | None) -> None:
        self.creds = creds
        self._client_ctx = None

    async def start_components(self, bootstrap: bool, members: dict[int, str] | None = None) -> None:
        state = self.state
        assert state is not None
        self.error = ""
        if self.keys.dek is None and not self.keys.load():
            raise ApiError(503, LOCKED)
        if state.role == "worker":
            self.keys.wrap("")      # workers are never locked
        self.set_credentials(self.load_credentials())
        if self.creds is None:
            raise ApiError(500, f"swarm state without certificates in {self.certs_dir}")
        if self.creds.seal_on_disk(self.certs_dir):
            log.info("the node's private keys are now encrypted at rest")
        if state.role == "manager":
            await self.start_manager(bootstrap, members or {})
        self.start_agent()

    def session_description(self) -> dict[str, Any]:
        """The node's description as its session reports it (and as `swarm init` first writes
        it): what the daemon reports, and the TLSInfo of its certificate and trust bundle, which
        a root CA rotation watches."""
        description = dict(self.description())
        if self.creds is not None:
            try:
                description["TLSInfo"] = node_tls_info(self.creds.cert_pem, self.creds.root_pem)
            except CertificateError as e:
                log.warning("cannot describe this node's certificate: %s", e)
        return description

    def start_agent(self) -> None:
        state = self.state
        assert state is not None
        self.agent = Agent(state.node_id, state.managers or [state.advertise_addr], self.client_context,
                           self._executor, self.session_description,
                           split_host_port(state.advertise_addr)[0],
                           on_managers=self._on_managers, on_node=self._on_node, logs=self._logs,
                           dependencies=self._dependencies, networking=self._networking,
                           leftover_containers=self._task_containers)
        self._spawn(self.agent.run(), "agent")

    async def start_manager(self, bootstrap: bool, members: dict[int, str]) -> None:
        """Bind the cluster port (a bind error is the caller's ApiError, and nothing is left
        running), then start the server and the manager runtime and wait until Raft runs."""
        state, creds = self.state, self.creds
        assert state is not None and creds is not None and self.keys.dek is not None
        self.server_tls = LiveServerContext(creds.server_context(self.certs_dir))
        server = RpcServer(self.server_tls.listener, identify=peer_identity)
        host, port = split_host_port(state.listen_addr)
        try:
            await server.listen(host, port)
        except OSError as e:
            raise ApiError(400, f"listen tcp {host}:{port}: bind: {e.strerror or e}") from None
        self._spawn(server.serve(), "cluster-port")   # owned from here on: a failure below stops it
        self.runtime = runtime = ManagerRuntime(
            raft_id=state.raft_id, advertise_addr=state.advertise_addr,
            raft_dir=LocalSwarmState.raft_dir(self.data_dir), server=server, client_ssl=self.client_context,
            members=members, bootstrap=bootstrap, leader_loops=self._leader_loops, metrics=self._metrics,
            options=NodeOptions(cipher=self.keys.dek))
        manager = self._spawn(runtime.run(), "manager")
        # A failed re-wrap (e.g. a disk error) is logged and retried after a growing delay.
        self._spawn(self._keep_running("re-wrapping the data key", lambda _: follow_unlock_key(
            runtime.store, self.keys, runtime.ready.wait)), "unlock-key")
        for watcher in self.manager_watchers:
            self._spawn(watcher(runtime.store), "manager-watcher")
        ready = asyncio.ensure_future(runtime.ready.wait())
        try:
            await asyncio.wait({ready, manager}, timeout=STARTUP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
        if not runtime.ready.is_set():
            why = self.error if manager.done() else f"Raft did not start within {STARTUP_TIMEOUT:.0f}s"
            raise ApiError(500, f"the manager did not start: {why}")

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
        certificate = message.get("certificate")
        self.wanted_certificate = certificate if isinstance(certificate, dict) else {}
        self.role_wakeup.set()

    async def forget(self) -> None:
        """Drop every trace of swarm membership on this node: stop the components, kill and
        remove the containers of the tasks the agent ran, delete the swarm state. Bounded."""
        task_ids = self.agent.task_ids() if self.agent is not None else []
        await self.stop_components()
        await remove_task_containers(self._executor, task_ids, REMOVE_CONTAINERS_TIMEOUT)
        if self._networking is not None:
            try:
                await self._networking.purge()      # the old swarm's networks go with it, as in Docker
            except Exception as e:
                self.record_failure("removing the old swarm's networks", e)
        self.state = None
        self.locked = False
        self.keys.forget()
        self.set_credentials(None)
        self.wanted_role = None     # what the old swarm wanted of this node means nothing to a new one
        self.role_wakeup.clear()
        self.error = ""
        shutil.rmtree(self.data_dir / "swarm", ignore_errors=True)

    # ---- transitions the node starts itself ---------------------------------------------------
    async def background(self, transition: Callable[[], Awaitable[T]]) -> T | None:
        """Run a transition the node starts itself (role change, Raft rejoin, certificate
        renewal) under the lock, as a child task that a leave cancels. Its result, or None when
        a leave cut it short."""
        attempt = asyncio.ensure_future(self._locked(transition))
        self._background.add(attempt)
        try:
            return await attempt
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if attempt.cancelled() and current is not None and not current.cancelling():
                return None     # a leave took precedence
            raise
        finally:
            self._background.discard(attempt)

    async def _locked(self, transition: Callable[[], Awaitable[T]]) -> T:
        async with self.lock:
            return await transition()

    async def _lock_for_leave(self) -> None:
        """Take the lock for a leave: cancel the node's own transitions in flight (again, should
        one swallow a cancel), and wait for an API transition to finish, within a bound."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEAVE_LOCK_TIMEOUT
        while True:
            for attempt in self._background:
                attempt.cancel()
            try:
                async with asyncio.timeout(min(RECANCEL_AFTER, max(0.0, deadline - loop.time()))):
                    await self.lock.acquire()
                return
            except TimeoutError:
                if loop.time() >= deadline:
                    raise ApiError(503, "another swarm operation is still in progress; try again") from None

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
        if self.locked and not force:
            raise ApiError(503, LOCKED_LEAVE)
        await self._lock_for_leave()
        try:
            await joining.leave(self, force)
        finally:
            self.lock.release()

    async def unlock(self, unlock_key: str) -> None:
        """Open a locked node's data key with the unlock key and start its swarm components
        (Docker's answers: 503 outside a swarm or on a worker, 409 when not locked, 400 for a
        malformed key, 401 for a key that does not open this node's data key)."""
        async with self.lock:
            if not self.locked:
                if self.state is None:
                    raise ApiError(503, NOT_IN_SWARM)
                if self.is_worker():
                    raise ApiError(503, WORKER_NODE)
                raise ApiError(409, "swarm is not locked")
            try:
                parse_unlock_key(unlock_key)
                self.keys.unlock(unlock_key)
            except InvalidUnlockKey as e:
                raise ApiError(400, str(e)) from None
            except WrongUnlockKey as e:
                raise ApiError(401, str(e)) from None
            except KeyFileError as e:
                raise ApiError(500, str(e)) from None
            self.locked = False
            log.info("swarm unlocked")
            try:
                await self.start_components(bootstrap=False)
            except Exception as e:
                self.record_failure("starting the swarm components after unlock", e)
                await self.stop_components()
                raise ApiError(500, f"swarm component could not be started: {e}") from None
            if self.runtime is not None:    # answer once the manager serves (a leader is known), bounded
                raft = self.runtime.raft
                with contextlib.suppress(TimeoutError):
                    await raft.wait_until(lambda: bool(raft.leader), timeout=STARTUP_TIMEOUT)

    # ---- info for the API ---------------------------------------------------------------------
    def manager_store(self) -> Store | None:
        if self.state is None or self.state.role != "manager" or self.runtime is None or self.runtime.removed:
            return None     # (a manager removed from Raft serves no cluster state: it is out of date)
        return self.runtime.store

    def is_worker(self) -> bool:
        return self.state is not None and (self.state.role == "worker" or (
            self.runtime is not None and self.runtime.removed))

    def leader_node_id(self) -> str:
        return self.runtime.leader_node_id() if self.runtime else ""

    async def read_barrier(self) -> None:
        if self.runtime is not None:
            await self.runtime.read_barrier()

    def allocator_writes(self) -> bool:
        """On a manager, always: every Raft leader runs the allocator among its leader loops (the
        daemon's Orchestration), and its writes reach this manager's store through Raft."""
        return True

    def swarm_state(self) -> str:
        if self.state is None:
            return "inactive"
        if self.locked:
            return "locked"
        return f"active/{self.state.role}"

    def swarm_info(self) -> dict[str, Any]:
        if self.state is None:
            return {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                    "Error": self.error, "RemoteManagers": None}
        if self.locked:
            return {"NodeID": "", "NodeAddr": "", "LocalNodeState": "locked", "ControlAvailable": False,
                    "Error": "", "RemoteManagers": None}
        info: dict[str, Any] = {
            "NodeID": self.state.node_id, "NodeAddr": split_host_port(self.state.advertise_addr)[0],
            "LocalNodeState": "active", "ControlAvailable": self.state.role == "manager", "Error": self.error,
            "RemoteManagers": [{"NodeID": "", "Addr": a} for a in self.state.managers],
        }
        if self.runtime is not None:
            info["Raft"] = self.runtime.raft_info()     # shoal's own: this manager's Raft ID, term, leader
            if self.runtime.removed:
                info["ControlAvailable"] = False
                info["Error"] = self.error or REMOVED
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
