"""IngressDataPlane: the asyncio face that keeps each namespace's tables equal to what is wanted.

One object per daemon. Every `set_*` call is level-triggered: it says the whole wanted state
of one namespace, and the data plane changes the difference. What a namespace holds is cached
from the last call; when nothing is cached (a fresh daemon, a restarted one, a namespace
recreated under the same path, or a call that failed half-way) it is read back from the
kernel first (readback.py), so a restarted daemon adopts the running data plane and changes
only what differs, open connections untouched. A table read back in a shape this code would
not have written is rewritten whole, in one transaction.

Calls for one namespace are serialized; calls for different ones run concurrently. When a
call returns, the change is in the kernel: a backend moved to draining takes no new
connection from then on (that is the acknowledgement the manager waits for before it stops
the container).

Order inside one call: sysctls (only when the fixed part of a table is written), routes that
must exist first, the one nft transaction, aliases / old routes, then the conntrack flushes of
backends gone for good (their clients get a reset on their next packet, not a hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Generic, TypeVar

from ingress.dataplane import kernel, readback
from ingress.dataplane.hostports import HostPort, host_ports_script
from ingress.dataplane.kernel import DataPlaneError
from ingress.dataplane.plan import (
    DEFAULT_PREFIX,
    LbLayout,
    MeshLayout,
    Plan,
    PublishLayout,
    TaskLayout,
    VipLayout,
    lb_removal,
    mesh_removal,
    plan_lb,
    plan_mesh,
    plan_publish,
    plan_task,
    plan_vips,
    publish_removal,
    publish_sysctls,
    table_names,
    task_removal,
)
from ingress.dataplane.readback import ReadBack
from ingress.dataplane.spec import IngressBackend, LbNetwork, Mesh, TaskIngress, TaskVips
from ingress.dns.netns import open_netns, run_in_netns

log = logging.getLogger(__name__)

L = TypeVar("L")
Netns = str | os.PathLike[str] | int   # a namespace's path (bind mount, /proc/PID/ns/net) or an open fd


@dataclass(frozen=True)
class Applied:
    """What one call did: nft commands in its transaction(s), conntrack entries deleted, and
    (set_mesh) the published ports that could not be reserved with a bound socket."""

    commands: int = 0
    flushed: int = 0
    unreserved: tuple[str, ...] = ()
    script: str = ""            # the nft transaction(s), for logs and tests


@dataclass
class _Held(Generic[L]):
    layout: L | None = None
    identity: tuple[int, int] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@contextlib.contextmanager
def _opened(netns: Netns | None) -> Iterator[int | None]:
    if netns is None or isinstance(netns, int):
        yield netns
        return
    fd = open_netns(os.fspath(netns))
    try:
        yield fd
    finally:
        os.close(fd)


async def _execute(fd: int | None, plan: Plan[L]) -> int:
    await kernel.write_sysctls(fd, plan.sysctls)
    await kernel.ip_batch(fd, plan.before_ip)
    await kernel.nft_apply(fd, plan.script)
    await kernel.ip_batch(fd, plan.after_ip)
    # The tables are right by now; a flush that fails leaves connections to a dead backend to
    # time out (as before this step), so it is reported, not retried with a rewrite.
    flushed, failed = await kernel.conntrack_delete_each(fd, [f.args for f in plan.flush])
    for exc in failed:
        log.warning("conntrack flush failed: %s", exc)
    return flushed


class IngressDataPlane:
    """See the module comment. `host_netns` is the daemon's namespace, where published ports
    are DNATed and reserved (None: the namespace of the calling thread). `prefix` names the
    tables (`<prefix>-lb`, `-mesh`, `-publish`, `-task`)."""

    def __init__(self, host_netns: Netns | None = None, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.tables = table_names(prefix)
        self.prefix = prefix
        self._host_netns = host_netns
        self._lb: dict[str, _Held[LbLayout]] = {}
        self._tasks: dict[str, _Held[TaskLayout]] = {}
        self._vips: dict[str, _Held[VipLayout]] = {}
        self._mesh: _Held[MeshLayout] = _Held()
        self._publish: _Held[PublishLayout] = _Held()
        self._reserved: dict[tuple[str, int], socket.socket] = {}
        self._mesh_ports: frozenset[tuple[str, int]] = frozenset()
        self._host_ports: frozenset[tuple[str, int]] = frozenset()
        self._host_lock = asyncio.Lock()

    # ------------------------------------------------------------ the generic step

    async def _step(self, held: _Held[L], netns: Netns | None,
                    read: Callable[[int | None], Awaitable[ReadBack[L]]],
                    plan_for: Callable[[L | None, bool], Plan[L]]) -> Applied:
        async with held.lock:
            with _opened(netns) as fd:
                ident = kernel.identity(fd)
                fresh = False
                layout = held.layout if held.identity == ident else None
                if layout is None:
                    found = await read(fd)
                    layout, fresh = found.layout, not found.consistent
                plan = plan_for(layout, fresh)
                held.layout = None                  # unknown until the plan has gone through
                try:
                    flushed = await _execute(fd, plan)
                except DataPlaneError as exc:
                    if fresh:
                        raise
                    log.warning("data plane step failed (%s); rewriting the table whole", exc)
                    found = await read(fd)
                    plan = plan_for(found.layout, True)
                    flushed = await _execute(fd, plan)
                held.layout, held.identity = plan.layout, ident
                return Applied(plan.commands, flushed, script=plan.script)

    # ------------------------------------------------------------ VIPs

    async def set_lb(self, key: str, netns: Netns, want: LbNetwork) -> Applied:
        """The VIP load balancer of one network (`key`, e.g. its id), in its LB namespace."""
        held = self._lb.setdefault(key, _Held())

        async def read(fd: int | None) -> ReadBack[LbLayout]:
            text = await kernel.nft_list(fd, self.tables["lb"])
            found = readback.lb_layout(text) if text is not None else ReadBack[LbLayout](None)
            addrs = readback.aliases(await kernel.ip_json(fd, "address", "show", "dev", want.device), want.address)
            base = found.layout or LbLayout()
            layout = LbLayout(base.base, base.services, base.vmap, addrs, base.exists)
            return ReadBack(layout, found.consistent)

        return await self._step(held, netns, read,
                                lambda cur, fresh: plan_lb(cur, want, self.prefix, fresh=fresh))

    async def held_lb(self, key: str, netns: Netns) -> dict[IPv4Address, frozenset[IPv4Address]]:
        """Every backend the network's LB table holds per VIP, in rotation or draining, as read
        from the kernel: after a restart, what the previous life of the daemon programmed."""
        async with self._lb.setdefault(key, _Held()).lock:
            with _opened(netns) as fd:
                text = await kernel.nft_list(fd, self.tables["lb"])
        layout = readback.lb_layout(text).layout if text is not None else None
        return {vip: slots.members for vip, slots in layout.services.items()} if layout is not None else {}

    async def remove_lb(self, key: str, netns: Netns | None, device: str | None = None) -> Applied:
        """Delete the network's LB table (and the VIP aliases on `device`), cutting its
        connections. With `netns` None (the namespace is gone, and everything in it) only the
        cache is dropped."""
        held = self._lb.pop(key, None) or _Held()
        if netns is None:
            return Applied()
        async with held.lock:
            with _opened(netns) as fd:
                layout = held.layout if held.identity == kernel.identity(fd) else None
                if layout is None:
                    text = await kernel.nft_list(fd, self.tables["lb"])
                    layout = readback.lb_layout(text).layout if text is not None else None
                    if layout is not None and device is not None:
                        own = IPv4Address(0)
                        addrs = readback.aliases(await kernel.ip_json(fd, "address", "show", "dev", device), own)
                        layout = LbLayout(None, layout.services, layout.vmap, addrs & layout.vmap, True)
                plan = lb_removal(layout, device, self.prefix)
                flushed = await _execute(fd, plan)
                return Applied(plan.commands, flushed)

    # ------------------------------------------------------------ routing mesh

    async def set_mesh(self, netns: Netns, want: Mesh) -> Applied:
        """The routing mesh: the ingress namespace `netns` first, then the daemon's namespace
        (DNAT towards it, and the ports reserved)."""

        async def read_mesh(fd: int | None) -> ReadBack[MeshLayout]:
            text = await kernel.nft_list(fd, self.tables["mesh"])
            return readback.mesh_layout(text) if text is not None else ReadBack[MeshLayout](None)

        async def read_publish(fd: int | None) -> ReadBack[PublishLayout]:
            text = await kernel.nft_list(fd, self.tables["publish"])
            return readback.publish_layout(text) if text is not None else ReadBack[PublishLayout](None)

        inner = await self._step(self._mesh, netns, read_mesh,
                                 lambda cur, fresh: plan_mesh(cur, want, self.prefix, fresh=fresh))
        outer = await self._step(self._publish, self._host_netns, read_publish,
                                 lambda cur, fresh: plan_publish(cur, want, self.prefix, fresh=fresh))
        self._mesh_ports = frozenset(want.by_key())
        unreserved = await self._reserve()
        return Applied(inner.commands + outer.commands, inner.flushed, unreserved, inner.script + outer.script)

    async def held_mesh(self, netns: Netns) -> dict[tuple[str, int], frozenset[IngressBackend]]:
        """Every backend the ingress namespace's table holds per published port, in rotation or
        draining, as read from the kernel: after a restart, what the previous life programmed."""
        async with self._mesh.lock:
            with _opened(netns) as fd:
                text = await kernel.nft_list(fd, self.tables["mesh"])
        layout = readback.mesh_layout(text).layout if text is not None else None
        return {key: slots.members for key, slots in layout.ports.items()} if layout is not None else {}

    async def remove_mesh(self, netns: Netns | None) -> Applied:
        """No published port any more: the daemon's table goes (and the reservations); the
        ingress namespace's too unless `netns` is None (gone already)."""
        async with self._publish.lock:
            with _opened(self._host_netns) as fd:
                plan = publish_removal(self.prefix)
                await _execute(fd, plan)
                self._publish.layout = None
        self._mesh_ports = frozenset()
        await self._reserve()
        flushed = 0
        async with self._mesh.lock:
            if netns is not None:
                with _opened(netns) as fd:
                    layout = self._mesh.layout if self._mesh.identity == kernel.identity(fd) else None
                    if layout is None:
                        text = await kernel.nft_list(fd, self.tables["mesh"])
                        layout = readback.mesh_layout(text).layout if text is not None else None
                    flushed = await _execute(fd, mesh_removal(layout, self.prefix))
            self._mesh.layout = None
        return Applied(0, flushed)

    async def set_host_ports(self, ports: Iterable[HostPort], device: str) -> Applied:
        """Host-mode published ports of this node's tasks (hostports.py), in the daemon's
        namespace, reached through `device` (the gateway bridge); reserved like the mesh's."""
        wanted = tuple(ports)
        async with self._host_lock:
            with _opened(self._host_netns) as fd:
                script = host_ports_script(wanted, device, self.prefix)
                if wanted:
                    await kernel.write_sysctls(fd, publish_sysctls(device))
                await kernel.nft_apply(fd, script)
            self._host_ports = frozenset(p.key for p in wanted)
            unreserved = await self._reserve()
        return Applied(script.count("\n"), unreserved=unreserved, script=script)

    async def _reserve(self) -> tuple[str, ...]:
        """Hold a bound socket on every published port (nothing else on the node gets it)."""
        wanted = set(self._mesh_ports | self._host_ports)
        for key in sorted(set(self._reserved) - wanted):
            self._reserved.pop(key).close()
        errors: list[str] = []
        for key in sorted(wanted - set(self._reserved)):
            try:
                if self._host_netns is None:
                    sock = _bind(key)
                else:
                    with _opened(self._host_netns) as fd:
                        assert fd is not None
                        sock = await run_in_netns(fd, functools.partial(_bind, key), discard=socket.socket.close)
            except OSError as exc:
                errors.append(f"{key[0]}/{key[1]}: {os.strerror(exc.errno) if exc.errno else exc}")
                continue
            self._reserved[key] = sock
        if errors:
            log.warning("published ports not reserved: %s", "; ".join(errors))
        return tuple(errors)

    # ------------------------------------------------------------ tasks on ingress

    async def set_task(self, key: str, netns: Netns, want: TaskIngress) -> Applied:
        """A task's side of the mesh (filter, reply routing), in its sandbox `netns`."""
        held = self._tasks.setdefault(key, _Held())

        async def read(fd: int | None) -> ReadBack[TaskLayout]:
            text = await kernel.nft_list(fd, self.tables["task"])
            rules = await kernel.ip_json(fd, "rule", "list")
            routes = await kernel.ip_json(fd, "route", "show", "table", "all")
            return readback.task_layout(text, rules, routes)

        return await self._step(held, netns, read,
                                lambda cur, fresh: plan_task(cur, want, self.prefix, fresh=fresh))

    async def set_vips(self, key: str, netns: Netns, want: TaskVips) -> Applied:
        """The VIPs a task's connections are balanced over as they leave its sandbox `netns`."""
        held = self._vips.setdefault(key, _Held())

        async def read(fd: int | None) -> ReadBack[VipLayout]:
            text = await kernel.nft_list(fd, self.tables["vip"])
            return readback.vip_layout(text) if text is not None else ReadBack[VipLayout](None)

        return await self._step(held, netns, read,
                                lambda cur, fresh: plan_vips(cur, want, self.prefix, fresh=fresh))

    def forget_sandbox(self, key: str) -> None:
        """A task's sandbox is gone, and its tables with it: nothing of it is held any more."""
        self._tasks.pop(key, None)
        self._vips.pop(key, None)

    async def remove_task(self, key: str, netns: Netns | None) -> Applied:
        held = self._tasks.pop(key, None) or _Held()
        if netns is None:
            return Applied()
        async with held.lock:
            with _opened(netns) as fd:
                layout = held.layout if held.identity == kernel.identity(fd) else None
                if layout is None:
                    text = await kernel.nft_list(fd, self.tables["task"])
                    layout = readback.task_layout(text, await kernel.ip_json(fd, "rule", "list"),
                                                  await kernel.ip_json(fd, "route", "show", "table", "all")).layout
                await _execute(fd, task_removal(layout, self.prefix))
        return Applied()

    # ------------------------------------------------------------ life

    def reserved(self) -> frozenset[tuple[str, int]]:
        return frozenset(self._reserved)

    async def close(self) -> None:
        """Let go of the port reservations; the kernel tables stay (a restarted daemon adopts
        them, and connections keep flowing meanwhile)."""
        for sock in self._reserved.values():
            sock.close()
        self._reserved.clear()


def _bind(key: tuple[str, int]) -> socket.socket:
    proto, port = key
    if proto == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    elif proto == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        except OSError as exc:
            raise OSError(exc.errno or errno.EPROTONOSUPPORT, f"sctp: {exc}") from exc
    try:
        sock.setblocking(False)
        sock.bind(("0.0.0.0", port))
        if proto != "udp":
            sock.listen(1)      # shows in `ss -ltn` as dockerd's does; DNAT sends nothing to it
    except BaseException:
        sock.close()
        raise
    return sock


__all__ = ["Applied", "DataPlaneError", "IngressDataPlane", "Netns"]
