"""A node's data key (encryption at rest) and autolock: locked at start, unlock, key changes.

Theory of operation. `NodeKeys` holds the node's data key (ca/encryption.py) in memory once it
is known, and writes `swarm-dek.json`. A node whose key file is wrapped (autolock) starts
*locked*: nothing of the swarm runs and the API answers cluster calls with Docker's 503 until
`POST /swarm/unlock` gives the unlock key that opens the file (or the node leaves with --force).

The unlock key itself is cluster state: `Cluster.unlock_key`, set while the spec's
`EncryptionConfig.AutoLockManagers` is true, so every manager learns it through Raft.
`follow_unlock_key` runs on each manager and re-wraps that manager's own data key whenever the
replicated key differs from the one its file is wrapped with (in the clear when autolock is off).
A manager that was down during a rotation still has its data key wrapped by the previous key, so
the previous key unlocks it, and once it runs it re-wraps with the new one: this is what Docker
does (its docs: keep the old key for a while after a rotation). Workers are never locked: their
file is kept in the clear.

As in Docker, a data key that was stored in the clear is rotated when it gets wrapped (autolock
turned on, or a manager that joined an autolocked swarm): what is written from then on cannot be
read with the key an old copy of the disk held. Differs from Docker: the records and snapshot
sealed before stay sealed with the older key (kept in the ring, wrapped) until later snapshots
and log compaction drop them; swarmkit snapshots and starts a new log under the new key at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ca.encryption import DataKey, KeyFile
from ca.node_tls import save_key_file
from engineapi.http import ApiError
from manager.store import Store, WatchDropped
from model import Cluster

log = logging.getLogger("shoal.swarm")

LOCKED = ('Swarm is encrypted and needs to be unlocked before it can be used. Please use "docker swarm unlock" '
          "to unlock it.")
LOCKED_LEAVE = "Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message."
# While locked, these answer as usual; every other cluster call gets LOCKED.
_CLUSTER_PREFIXES = ("/swarm", "/nodes", "/services", "/tasks", "/secrets", "/configs")
_SERVED_WHEN_LOCKED = ("/swarm/unlock", "/swarm/leave")


class NodeKeys:
    """The node's data key and the unlock key its key file is wrapped with ("" = in the clear)."""

    def __init__(self, certs_dir: Path) -> None:
        self.certs_dir = certs_dir
        self.dek: DataKey | None = None
        self.wrapped_with = ""

    def load(self) -> bool:
        """Read the key file (create a data key, in the clear, if there is none); False if the
        file is wrapped and the node therefore locked."""
        key_file = KeyFile.load(self.certs_dir)
        if key_file is None:
            self.create()
            return True
        if key_file.locked:
            self.dek = None
            return False
        self.dek, self.wrapped_with = key_file.open(), ""
        return True

    def create(self, unlock_key: str = "") -> DataKey:
        """A new data key for a node that starts a swarm or joins one."""
        self.dek = DataKey.generate()
        self.wrapped_with = "\0"        # differs from any key: `wrap` writes the file
        self.wrap(unlock_key)
        return self.dek

    def unlock(self, unlock_key: str) -> None:
        """Open a wrapped key file; ca.encryption.WrongUnlockKey if the key does not open it."""
        key_file = KeyFile.load(self.certs_dir)
        if key_file is None:
            raise ApiError(500, f"no data key file in {self.certs_dir}")
        self.dek, self.wrapped_with = key_file.open(unlock_key), unlock_key if key_file.locked else ""

    def wrap(self, unlock_key: str) -> bool:
        """Store the data key wrapped by `unlock_key` ("" = in the clear); True if rewritten. A key
        that was in the clear is rotated as it gets wrapped: the new key is in the file before
        the storage seals anything with it (ca/encryption.py)."""
        if self.dek is None or unlock_key == self.wrapped_with:
            return False
        new_key = DataKey.generate().key if unlock_key and self.wrapped_with == "" else None
        self.certs_dir.mkdir(parents=True, exist_ok=True)
        save_key_file(self.certs_dir, KeyFile.for_key(self.dek, unlock_key, rotate_to=new_key))
        if new_key is not None:
            self.dek.rotate(new_key)
            log.info("data key rotated: it was stored in the clear until now")
        self.wrapped_with = unlock_key
        return True

    def forget(self) -> None:
        self.dek, self.wrapped_with = None, ""

    @property
    def key_password(self) -> bytes | None:
        return self.dek.key_password if self.dek is not None else None


def wanted_unlock_key(cluster: Cluster) -> str:
    """The key managers wrap their data key with: the cluster's while autolock is on."""
    autolock = bool((cluster.spec.get("EncryptionConfig") or {}).get("AutoLockManagers"))
    return cluster.unlock_key if autolock else ""


async def follow_unlock_key(store: Store, keys: NodeKeys, ready: Callable[[], Awaitable[Any]]) -> None:
    """On a manager: keep the data key wrapped by the cluster's current unlock key."""
    await ready()
    while True:
        clusters, sub = store.view_and_watch(lambda tx: tx.all("clusters"), tables=("clusters",))
        try:
            while True:
                for cluster in clusters:
                    if keys.wrap(wanted_unlock_key(cluster)):
                        log.info("data key re-wrapped", extra={"autolock": bool(keys.wrapped_with)})
                await sub.wait()
                if sub.closed and not sub.dropped_reason:
                    return
                sub.drain()
                clusters = store.view(lambda tx: tx.all("clusters"))
        except WatchDropped:
            continue        # resync from a new snapshot
        finally:
            sub.close()


def locked_gate(is_locked: Callable[[], bool]) -> Any:
    """Middleware: while the node is locked, cluster calls other than unlock and leave get
    Docker's 503 (`/_ping`, `/version`, `/info` and the node's own containers and images answer,
    as they do on a locked dockerd)."""

    @web.middleware
    async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
        if is_locked():
            path = request.path
            if path.startswith("/v1."):
                path = "/" + path.split("/", 2)[2]
            if path.startswith(_CLUSTER_PREFIXES) and path not in _SERVED_WHEN_LOCKED:
                raise ApiError(503, LOCKED)
        response: web.StreamResponse = await handler(request)
        return response

    return gate
