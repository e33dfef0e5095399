"""One manager and one worker agent in-process, over the real cluster port: the harness of the
dispatcher, agent, secret-delivery and log-session tests.

A store seeded with a cluster (heartbeat period as given) and the worker's node, a Dispatcher on
an RpcServer with mutual TLS on loopback (certificates from a fresh RootCA), and an Agent with
the given executor connected to it. Everything runs in one TaskGroup, cancelled on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca.authority import NodeIdentity, RootCA, key_pem, make_csr, new_key
from ca.node_tls import NodeCredentials, peer_identity
from manager.dispatcher import Dispatcher
from manager.dispatcher.rpc import register_dispatcher
from manager.store import Store, WriteTx
from model import Cluster, Node, new_id
from rpc.server import RpcServer
from worker.agent.agent import Agent

# Extra manager-side services: given the server, dispatcher and store, register what they need
# and return the coroutines to run alongside (e.g. a log broker's loop).
Extras = Callable[[RpcServer, Dispatcher, Store], list[Coroutine[Any, Any, None]]]


def creds(ca: RootCA, node_id: str, role: str, root: Path) -> tuple[NodeCredentials, Path]:
    key = new_key()
    c = NodeCredentials(ca.cert_pem, ca.issue(make_csr(key), NodeIdentity(node_id, role, "c")), key_pem(key))
    c.save(root / node_id)
    return c, root / node_id


@dataclass
class SessionEnv:
    store: Store
    node: str                       # the worker's node ID
    dispatcher: Dispatcher
    agent: Agent
    agent_task: asyncio.Task[None]
    addr: str                       # the manager's cluster port
    manager_ctx: Callable[[], Any]  # an SSL context with the manager's certificate


@contextlib.asynccontextmanager
async def session_env(root: Path, executor: Any, *, period_ns: int = 200_000_000,
                      extras: Extras | None = None, **agent_kw: Any) -> AsyncIterator[SessionEnv]:
    store = Store()
    worker_id = new_id()

    def seed(tx: WriteTx) -> None:
        tx.create(Cluster(id=new_id(), spec={"Name": "default", "Dispatcher": {"HeartbeatPeriod": period_ns}}))
        tx.create(Node(id=worker_id, spec={"Role": "worker", "Availability": "active", "Labels": {}}))

    await store.update(seed)
    ca = RootCA.create("c")
    mcreds, mdir = creds(ca, "mgr", "manager", root)
    server = RpcServer(mcreds.server_context(mdir), identify=peer_identity)
    dispatcher = Dispatcher(store)
    register_dispatcher(server, lambda: dispatcher, lambda: "")
    side = extras(server, dispatcher, store) if extras is not None else []
    ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    wcreds, wdir = creds(ca, worker_id, "worker", root)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(server.serve("127.0.0.1", 0, ready)), group.create_task(dispatcher.run()),
                 *(group.create_task(c) for c in side)]
        host, port = await ready
        agent = Agent(worker_id, [f"{host}:{port}"], lambda: wcreds.client_context(wdir), executor,
                      lambda: {"Hostname": "w1", "Platform": {"OS": "linux", "Architecture": "x86_64"}},
                      "127.0.0.1", **agent_kw)
        agent_task = group.create_task(agent.run())
        try:
            yield SessionEnv(store, worker_id, dispatcher, agent, agent_task, f"{host}:{port}",
                             lambda: mcreds.client_context(mdir))
        finally:
            for t in [*tasks, agent_task]:
                t.cancel()
