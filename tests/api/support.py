"""Test support for the swarm-object API: an app over an in-memory store, served in-process.

`StoreCluster` plays the daemon's ClusterAccess: it hands out a Store on an InMemoryProposer
(or None, to answer like a worker or a node outside any swarm), and says an allocator writes
into it only when the test says it runs one there (`allocating`): the service API then waits
for the allocator's Endpoint write, else it answers at once. `build_app` mounts the system
routes (the docker CLI pings and reads /info), every cluster route, and a minimal `GET /nodes`
(owned elsewhere in the daemon; the convergence display polls it). `FakeReconciler` stands in
for the orchestrator, scheduler and agent in CLI tests: on every store change it makes the
wanted tasks of each replicated service and reports them running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from aio import cancel_and_wait
from engineapi.http import Routes, new_app
from manager.allocator import Allocator, needs_ingress
from manager.api import nodes
from manager.api.cluster import CLUSTER, ClusterAccess
from manager.api.routes import add_cluster_routes
from manager.orchestrator.common import is_task_dirty
from manager.store import Store, WriteTx
from model import Node, Service, Task, TaskState, TaskStatus, new_id
from node import system_api as system

NODE_ID = "n0de0000000000000000000001"


def new_store() -> Store:
    return Store()  # proposals apply at once (InMemoryProposer)


class StoreCluster:
    def __init__(self, store: Store | None, worker: bool = False, allocator: bool = False) -> None:
        self.store = store
        self.worker = worker
        self.allocator = allocator      # the test runs a real Allocator on the store

    def manager_store(self) -> Store | None:
        return self.store

    def is_worker(self) -> bool:
        return self.worker

    def leader_node_id(self) -> str:
        return NODE_ID

    async def read_barrier(self) -> None:
        """One store, no Raft: every write is already in it."""

    def allocator_writes(self) -> bool:
        return self.allocator


class ActiveManager:
    def swarm_info(self) -> dict[str, Any]:
        return {"NodeID": NODE_ID, "NodeAddr": "127.0.0.1", "LocalNodeState": "active",
                "ControlAvailable": True, "Error": "", "RemoteManagers": [{"NodeID": NODE_ID,
                                                                           "Addr": "127.0.0.1:2377"}],
                "Nodes": 1, "Managers": 1}

    def swarm_state(self) -> str:
        return "active/manager"


def build_app(cluster: StoreCluster, tmp: Path | None = None) -> web.Application:
    app = new_app()
    access: ClusterAccess = cluster
    app[CLUSTER] = access
    swarm: system.SwarmInfoSource = ActiveManager()
    app[system.SWARM_INFO] = swarm
    app[system.DATA_DIR] = str(tmp or "/tmp")
    app[system.HOSTNAME] = "node-a"
    routes = Routes(app)
    system.add_routes(routes)
    add_cluster_routes(routes)
    nodes.add_routes(routes)
    return app


async def add_node(store: Store, hostname: str = "node-a", node_id: str = NODE_ID) -> None:
    node = Node(id=node_id, spec={"Labels": {}, "Role": "manager", "Availability": "active"},
                description={"Hostname": hostname, "Platform": {"OS": "linux", "Architecture": "x86_64"}},
                status={"State": "ready", "Message": "", "Addr": "127.0.0.1"})
    await store.update(lambda tx: tx.create(node))


@contextlib.asynccontextmanager
async def serve_unix(app: web.Application, socket: Path) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(socket)).start()
        yield f"unix://{socket}"
    finally:
        await runner.cleanup()


class FakeReconciler:
    """Replicated services only: slots 1..N on one node, running at once; old tasks shut down."""

    def __init__(self, store: Store, node_id: str = NODE_ID) -> None:
        self.store = store
        self.node_id = node_id

    def _reconcile(self, tx: WriteTx) -> None:
        services: list[Service] = tx.all("services")
        for service in services:
            if service.mode != "replicated":
                continue
            tasks: list[Task] = [t for t in tx.find("tasks", service_id=service.id)
                                 if t.desired_state == TaskState.RUNNING]
            by_slot = {t.slot: t for t in tasks}
            for slot, task in by_slot.items():
                if slot > service.replicas or is_task_dirty(service, task):
                    self._stop(tx, task, TaskState.SHUTDOWN if slot <= service.replicas else TaskState.REMOVE)
            for slot in range(1, service.replicas + 1):
                if slot not in by_slot or is_task_dirty(service, by_slot[slot]):
                    status = TaskStatus(TaskState.RUNNING, tx.now, "started")
                    # on ingress when it publishes a port, as the allocator would have put it
                    ingress = [{"Network": {"ID": "ingress", "Spec": {"Name": "ingress", "Ingress": True}},
                                "Addresses": []}] if needs_ingress(service) else []
                    tx.create(Task(id=new_id(), service_id=service.id, slot=slot, node_id=self.node_id,
                                   spec=service.spec["TaskTemplate"], status=status,
                                   service_name=service.name, networks_attachments=ingress))

    def _stop(self, tx: WriteTx, task: Task, desired: TaskState) -> None:
        stopped = task.copy()
        stopped.set_desired_state(desired)
        stopped.status.advance(TaskState.SHUTDOWN, tx.now, "shutdown")
        tx.update(stopped)

    async def run(self) -> None:
        sub = self.store.watch(tables=("services",))
        try:
            await self.store.update(self._reconcile)
            while True:
                await sub.wait()
                sub.drain()
                await self.store.update(self._reconcile)
        finally:
            sub.close()


@contextlib.asynccontextmanager
async def _running(loop: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """`loop` runs in a task for the block, cancelled (and awaited) after it."""
    task = asyncio.create_task(loop)
    try:
        yield
    finally:
        await cancel_and_wait([task])


def reconciling(store: Store) -> contextlib.AbstractAsyncContextManager[None]:
    return _running(FakeReconciler(store).run())


def allocating(store: Store) -> contextlib.AbstractAsyncContextManager[None]:
    """The real allocator's leader loop: networks, and services' Endpoint (ports, VIPs)."""
    return _running(Allocator(store).run())


async def until_service(store: Store, ref: str, check: Any, timeout: float = 10) -> Service:
    """The service once `check(service)` holds (waits for store writes, with a deadline)."""
    sub = store.watch(tables=("services",))
    try:
        async with asyncio.timeout(timeout):
            while True:
                found = store.view(lambda tx: tx.find("services", name=ref)) or \
                    [s for s in store.view(lambda tx: tx.all("services")) if s.id == ref]
                if found and check(found[0]):
                    return found[0]
                await sub.wait()
                sub.drain()
    finally:
        sub.close()


async def call(client: TestClient, method: str, path: str, body: Any = None,
               expect: int | None = None, **params: Any) -> tuple[int, Any]:
    """One request; returns (status, decoded JSON or None); checks `expect` when given."""
    resp = await client.request(method, path, params=params or None,
                                data=json.dumps(body) if body is not None else None)
    raw = await resp.read()
    if resp.status >= 400:
        assert resp.headers["Content-Type"] == "application/json"
    decoded = json.loads(raw) if raw else None
    if expect is not None:
        assert resp.status == expect, decoded
    return resp.status, decoded
