"""How Engine API handlers reach the cluster state, and the errors for nodes that hold none.

Handlers for swarm objects call `cluster_store(request)`. On a manager it returns the replicated
store (reads are local; writes are proposed through Raft and, on a follower, forwarded to the
leader by the store's proposer). On a worker, or on a daemon outside any swarm, it answers 503
with the message the docker CLI and docker-py expect.

The cluster access (`ClusterAccess`, put in the app by whoever composes the API with a store:
the daemon, or a test) also says what only that composer knows, such as whether an allocator
writes into the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web

from engineapi.http import ApiError
from manager.store import Store, WriteTx, retry_on_conflict

NOT_IN_SWARM = ('This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" '
                "to connect this node to swarm and try again.")
WORKER_NODE = ("This node is not a swarm manager. Worker nodes can't be used to view or modify cluster "
               "state. Please run this command on a manager node or promote the current node to a manager.")


class ClusterAccess(Protocol):
    def manager_store(self) -> Store | None:
        """The replicated store when this node is an active manager, else None."""
        ...

    def is_worker(self) -> bool:
        """True when this node is in a swarm as a worker."""
        ...

    def leader_node_id(self) -> str:
        """The node ID of the current Raft leader, as this manager sees it ("" if none)."""
        ...

    async def read_barrier(self) -> None:
        """Return once this manager's store holds every write committed before the call
        (a Raft ReadIndex round); raise an error with an HTTP status when there is no quorum."""
        ...

    def allocator_writes(self) -> bool:
        """True when an allocator writes into the store `manager_store` returns (a service's
        Endpoint: VIPs, published ports), so the service API waits for that write before it
        answers (manager/allocator/endpoints.py); when False nothing would come and it does not."""
        ...


CLUSTER = web.AppKey("cluster", ClusterAccess)
CLUSTER_READ_PREFIXES = ("/swarm", "/nodes", "/services", "/tasks", "/networks", "/secrets", "/configs")


@web.middleware
async def linearizable_reads(request: web.Request, handler: Any) -> web.StreamResponse:
    """Cluster reads on any manager see every write committed before them: a follower is never
    behind its own caller's last write, and a manager cut off from quorum answers 503 instead of
    serving stale state."""
    if request.method in ("GET", "HEAD"):
        path = request.path
        if path.startswith("/v1."):
            path = "/" + path.split("/", 2)[2]
        if path.startswith(CLUSTER_READ_PREFIXES) and request.app[CLUSTER].manager_store() is not None:
            await request.app[CLUSTER].read_barrier()
    response: web.StreamResponse = await handler(request)
    return response


def cluster_store(request: web.Request) -> Store:
    access = request.app[CLUSTER]
    store = access.manager_store()
    if store is None:
        raise ApiError(503, WORKER_NODE if access.is_worker() else NOT_IN_SWARM)
    return store


T = TypeVar("T")


async def write(store: Store, fn: Callable[[WriteTx], T]) -> T:
    """An API write. `fn` re-reads what it changes and itself checks any version the client sent,
    so running it again is always right; it runs again when its entry lost to another one that
    changed what it read (on a follower, whose copy of the store can be a little behind the
    leader's: a service removal there used to fail "update out of sequence" on a task the
    dispatcher had just updated)."""
    return await retry_on_conflict(lambda: store.update(fn))


def require_version(request: web.Request) -> int:
    """The `version` query parameter of an update, as the Engine API requires it."""
    raw = request.query.get("version", "")
    try:
        version = int(raw)
    except ValueError:
        raise ApiError(400, f"invalid {_kind_of(request)} version '{raw}': must be an integer") from None
    if version < 0:
        raise ApiError(400, f"invalid {_kind_of(request)} version '{raw}': must not be negative")
    return version


def _kind_of(request: web.Request) -> str:
    parts = [p for p in request.path.split("/") if p and not p.startswith("v1.")]
    return parts[0].rstrip("s") if parts else "object"

