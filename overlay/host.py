"""OverlayHost: the asyncio face of one daemon's overlay data path.

netlink calls block, and namespace switches are per thread, so every operation runs on one
worker thread owned by the host (datapath.py holds the logic). That thread enters the
daemon's namespace once and stays there; operations are queued to it in call order, so
they never interleave and need no locks. Cancelling an awaiting caller does not stop an
operation half-way: it finishes on the thread, and the next call sees its result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from overlay.datapath import AdoptReport, DataPath, OverlayError
from overlay.plan import DEFAULT_GATEWAY_SUBNET
from overlay.spec import Attachment, OverlaySpec, Peer
from overlay.state import SandboxRecord

T = TypeVar("T")


class OverlayHost:
    """One per daemon. `run_dir` is the daemon's own: every name global to the machine (the
    namespace bind mounts) lives below it. `name_prefix` (≤ 6 chars) names what the host makes
    in the daemon's namespace: the bridge `<prefix>_gwbridge`, its veths, the nftables tables
    `<prefix>-gw` and `<prefix>-vxlan`. `netns` is the namespace the daemon acts from (the VXLAN sockets, the gateway
    bridge); None means the one of the thread that constructs the host.

    Every method is a coroutine except the two path lookups; a daemon that restarts calls
    adopt() first, then reconcile() with the networks it wants."""

    def __init__(self, local_vtep: IPv4Address, port: int, run_dir: Path, name_prefix: str = "shoal", *,
                 netns: Path | None = None, gateway_subnet: IPv4Network = DEFAULT_GATEWAY_SUBNET,
                 gateway_mtu: int = 1500) -> None:
        self._datapath = DataPath(local_vtep, port, Path(run_dir), name_prefix, home=netns,
                                  gateway_subnet=gateway_subnet, gateway_mtu=gateway_mtu)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlay")
        self._started = self._pool.submit(self._datapath.start)
        self._closed = False

    @property
    def local_vtep(self) -> IPv4Address:
        return self._datapath.local_vtep

    @property
    def port(self) -> int:
        return self._datapath.port

    @property
    def gateway_bridge(self) -> str:
        """The bridge in the daemon's namespace that sandboxes' gateway interfaces hang off."""
        return self._datapath.gateway_bridge

    @property
    def run_dir(self) -> Path:
        return self._datapath.state.run_dir

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise OverlayError("the overlay host is closed")
        return await asyncio.wrap_future(self._pool.submit(self._call, functools.partial(fn, *args)))

    def _call(self, fn: Callable[[], T]) -> T:
        self._started.result()       # raises the start error again for every call, if any
        return fn()

    async def __aenter__(self) -> OverlayHost:
        await asyncio.wrap_future(self._started)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Release sockets and the thread; the data path itself stays up (live restore)."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wrap_future(self._pool.submit(self._datapath.close))
        finally:
            self._pool.shutdown(wait=False)

    # networks

    async def ensure_network(self, spec: OverlaySpec) -> None:
        """The network's namespace, bridge (gateway address) and VXLAN device; idempotent."""
        await self._run(self._datapath.ensure_network, spec)

    async def remove_network(self, network_id: str) -> None:
        """Remove the network and its devices (endpoints still on it lose that interface)."""
        await self._run(self._datapath.remove_network, network_id)

    async def reconcile(self, specs: Iterable[OverlaySpec]) -> None:
        """Make the set of networks on this node exactly `specs`."""
        await self._run(self._datapath.reconcile, list(specs))

    def network_path(self, network_id: str) -> Path:
        """The namespace of a network (its bridge and VXLAN device live there)."""
        return self._datapath.network_path(network_id)

    async def networks(self) -> dict[str, OverlaySpec]:
        return await self._run(self._datapath.networks)

    async def set_local_vtep(self, vtep: IPv4Address) -> None:
        """A new data-path address: every VXLAN device is re-created with it, peers kept."""
        await self._run(self._datapath.set_local_vtep, vtep)

    # peers

    async def set_peers(self, network_id: str, peers: Iterable[Peer]) -> int:
        """Make the network's neighbour and forwarding entries exactly `peers` (remote ones:
        those behind this host's own VTEP are skipped). Returns how many entries changed."""
        return await self._run(self._datapath.set_peers, network_id, list(peers))

    async def peers(self, network_id: str) -> set[Peer]:
        """The peers as the kernel holds them."""
        return await self._run(self._datapath.peers, network_id)

    # sandboxes

    async def create_sandbox(self, key: str) -> Path:
        """A network namespace for a container, `lo` up; its path (the OCI config joins it)."""
        return await self._run(self._datapath.create_sandbox, key)

    async def delete_sandbox(self, key: str) -> None:
        await self._run(self._datapath.delete_sandbox, key)

    async def attach(self, key: str, attachments: list[Attachment], gateway: bool | None = None) -> None:
        """Give the sandbox eth0, eth1, … (one per attachment, in order) and, unless every
        attachment is internal (or `gateway` says otherwise), one more on the gateway bridge
        with the default route."""
        await self._run(self._datapath.attach, key, list(attachments), gateway)

    async def detach(self, key: str) -> None:
        await self._run(self._datapath.detach, key)

    async def sandboxes(self) -> dict[str, SandboxRecord]:
        return await self._run(self._datapath.sandboxes)

    def sandbox_path(self, key: str) -> Path:
        return self._datapath.sandbox_path(key)

    # live restore

    async def adopt(self) -> AdoptReport:
        """Take over what an earlier life left in run_dir without cutting running containers."""
        return await self._run(self._datapath.adopt)

    async def purge(self) -> None:
        """Remove every network, sandbox and the gateway bridge of this host."""
        await self._run(self._datapath.purge)
