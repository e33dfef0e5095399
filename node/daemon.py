"""`shoal daemon`: the composition root of one host.

Theory of operation: the daemon takes an exclusive lock on its data dir (a second daemon on the
same dir exits with a clear message), then starts its components inside one Supervisor
TaskGroup: the Engine API server first, later the swarm node. The first SIGTERM/SIGINT starts
an ordered shutdown bounded by `shutdown_timeout`: stop accepting API connections, cancel
components newest first, release the lock. A second signal forces an immediate exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import ssl
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from engineapi.events import EventBus, message
from engineapi.http import LONG_LIVED, SERVER_VERSION, Routes, new_app
from manager.api import logs as logs_api
from manager.api import nodes as nodes_api
from manager.api import swarm as cluster_swarm_api
from manager.api.cluster import CLUSTER, linearizable_reads
from manager.api.local_networks import LOCAL_NETWORKS
from manager.api.routes import add_cluster_routes
from manager.logbroker.access import ClusterLogs
from manager.swarm.leader_loops import Orchestration
from node import events_api, swarm_api
from node import system_api as system
from node.addresses import split_host_port
from node.attachments import AttachingNetworking, OverlayAttachments
from node.autolock import locked_gate
from node.localdns import LocalDns
from node.metrics import DaemonMetrics, SideServer, side_servers
from node.networking import LocalNetworkSource, NodeNetworking
from node.supervisor import Supervisor
from node.swarm_node import SwarmNode
from overlay import local_bridge
from worker.agent.dependencies import Dependencies
from worker.exec import TaskExecutor
from worker.executor import api as volumes_api
from worker.executor.container_events import EventfulTaskExecutor
from worker.executor.executor import Executor
from worker.executor.node_api import add_node_container_routes, container_publisher
from worker.executor.task_executor import RuncTaskExecutor
from worker.images import api as images_api
from worker.images.store import ImageStore
from worker.localnet import api as localnet_api
from worker.localnet.networks import LocalNetworks
from worker.standalone import api as standalone_api
from worker.standalone.containers import StandaloneContainers
from worker.timed import TimedTaskExecutor

log = logging.getLogger("shoal.daemon")

DEFAULT_DATA_DIR = "/var/lib/shoal"
DEFAULT_SOCKET = "/run/shoal/shoal.sock"
EXIT_FORCED = 130


class DaemonError(Exception):
    """A startup problem reported to the user as one line."""


@dataclass(frozen=True)
class DaemonConfig:
    data_dir: Path
    socket: Path
    listen_addr: str = "0.0.0.0:2377"
    advertise_addr: str = ""
    tcp: str = ""                   # "host:port" for an optional TCP API
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""                # when set, TCP clients must present a certificate from it
    shutdown_timeout: float = 10.0
    hostname: str = ""             # the name this node reports; default: the kernel hostname
    metrics_addr: str = ""         # "[HOST:]PORT" of the Prometheus endpoint (loopback unless a host is named)
    dashboard_addr: str = ""       # "[HOST:]PORT" of the live dashboard (loopback unless a host is named)


class DataDirLock:
    """An flock on `<data-dir>/shoal.lock`, held for the daemon's lifetime."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "shoal.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise DaemonError(
                    f"another shoal daemon (pid {holder}) is already using data dir "
                    f"{self.path.parent}"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _tls_context(config: DaemonConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.tls_cert, config.tls_key or None)
    if config.tls_ca:
        ctx.load_verify_locations(config.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass
class Host:
    """Everything one daemon runs, wired together (the composition root)."""

    app: web.Application
    swarm: SwarmNode
    executor: Executor
    images: ImageStore
    networking: NodeNetworking
    side_servers: list[SideServer] = field(default_factory=list)   # metrics, dashboard


def node_description(hostname: str) -> dict[str, Any]:
    import platform

    from node.system_api import meminfo_total

    return {
        "Hostname": hostname,
        "Platform": {"Architecture": platform.machine() or "x86_64", "OS": "linux"},
        "Resources": {"NanoCPUs": (os.cpu_count() or 1) * 1_000_000_000, "MemoryBytes": meminfo_total()},
        "Engine": {"EngineVersion": SERVER_VERSION, "Labels": {},
                   "Plugins": [{"Type": "Network", "Name": "overlay"}, {"Type": "Volume", "Name": "local"}]},
    }


def build_host(config: DaemonConfig) -> Host:
    hostname = config.hostname or socket.gethostname()
    images = ImageStore(config.data_dir / "images")
    executor = Executor(config.data_dir)
    dependencies = Dependencies(hostname)   # the node's secrets and configs: filled by the agent, read by the executor

    def data_path_address() -> str:
        """The VXLAN tunnel address: the node's advertise address in its swarm."""
        return split_host_port(swarm.state.advertise_addr)[0] if swarm.state is not None else ""

    networking = AttachingNetworking(config.data_dir / "network", data_path_address)   # tasks' and containers'
    metrics = DaemonMetrics() if config.metrics_addr else None
    task_executor: TaskExecutor = RuncTaskExecutor(executor, images, dependencies=dependencies, networking=networking)
    events = EventBus()             # the node's container events, for GET /events
    task_executor = EventfulTaskExecutor(task_executor, executor, container_publisher(events))
    if metrics is not None:
        task_executor = TimedTaskExecutor(task_executor, metrics.container_started)

    async def task_containers() -> list[str]:
        """The task IDs of the swarm task containers on this host (a task container's ID is its task's)."""
        return [c.id for c in await executor.list_existing() if "com.docker.swarm.task.id" in c.config.labels]

    swarm = SwarmNode(config.data_dir, listen_addr=config.listen_addr, advertise_addr=config.advertise_addr,
                      hostname=hostname,
                      executor=task_executor,
                      description=lambda: node_description(hostname),
                      leader_loops=[partial(Orchestration, on_assigned=metrics.manager.task_assigned)
                                    if metrics is not None else Orchestration],
                      logs=executor, dependencies=dependencies, networking=networking,
                      metrics=metrics.manager if metrics is not None else None, task_containers=task_containers)
    app = new_app(locked_gate(lambda: swarm.locked), linearizable_reads)
    app[system.SWARM_INFO] = swarm
    app[CLUSTER] = swarm
    app[LOCAL_NETWORKS] = LocalNetworkSource(networking, hostname,
                                             lambda: swarm.state.node_id if swarm.state is not None else "")
    app[logs_api.LOG_SOURCE] = ClusterLogs(lambda: swarm.runtime)
    app[swarm_api.SWARM_CONTROL] = swarm
    app[cluster_swarm_api.SWARM_UNLOCK_CONTROL] = swarm
    app[system.DATA_DIR] = str(config.data_dir)
    app[system.HOSTNAME] = hostname
    routes = Routes(app)
    system.add_routes(routes)
    swarm_api.add_routes(routes)
    cluster_swarm_api.add_routes(routes)
    nodes_api.add_routes(routes)
    add_cluster_routes(routes)
    images_api.add_routes(routes, images)
    volumes_api.add_routes(routes, executor.volumes)
    containers = add_node_container_routes(app, routes, executor, lambda ref: _image_id(images, ref), events)
    local_networks = LocalNetworks(config.data_dir / "localnets", executor.layout.run_dir / "standalone-netns",
                                   local_bridge, lambda *event: events.publish(message("network", *event)))
    local_networks.overlays = OverlayAttachments(config.data_dir / "attachments", networking, swarm)
    local_networks.dns = LocalDns(local_networks.namespace)    # 127.0.0.11 on user-defined bridge networks
    standalone = StandaloneContainers(containers, images, local_networks)
    standalone_api.add_routes(app, routes, standalone)              # docker run
    localnet_api.add_routes(app, routes, local_networks, standalone)  # bridge networks, connect/disconnect
    events_api.add_routes(routes, events)
    swarm.manager_watchers.append(events_api.record_swarm_events(events))   # swarm events in the same history
    if metrics is not None:
        metrics.watch_manager(lambda: swarm.runtime)
        metrics.instrument_api(app)
    return Host(app, swarm, executor, images, networking,
                side_servers(metrics, config.metrics_addr, config.dashboard_addr, swarm.manager_store,
                             swarm.leader_node_id))


def _image_id(images: ImageStore, ref: str) -> str:
    try:
        return images.get(ref).id
    except Exception:      # gone since the container was made: dockerd shows the ID it had
        return ""


def build_app(config: DaemonConfig) -> web.Application:
    return build_host(config).app


class ApiServer:
    """The Engine API on the unix socket, and on TCP (optionally TLS) when asked."""

    def __init__(self, config: DaemonConfig, app: web.Application) -> None:
        self._config = config
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)

    async def start(self) -> None:
        """The TCP listener first, the unix socket last: a client that finds the socket (how
        everyone tells the daemon is up) finds every listener up."""
        await self._runner.setup()
        assert self._runner.server is not None
        self._runner.app[LONG_LIVED].watch_disconnects(self._runner.server)   # a gone client ends its wait
        if self._config.tcp:
            host, _, port = self._config.tcp.rpartition(":")
            site = web.TCPSite(
                self._runner, host or "127.0.0.1", int(port), ssl_context=_tls_context(self._config)
            )
            await site.start()
        sock = self._config.socket
        sock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        await web.UnixSite(self._runner, str(sock)).start()
        os.chmod(sock, 0o660)

    async def stop(self) -> None:
        await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self._config.socket.unlink()


async def serve(config: DaemonConfig, stop: asyncio.Event) -> None:
    """Run until `stop` is set, then shut down in order within the configured bound."""
    host = build_host(config)
    api = ApiServer(config, host.app)
    await host.executor.start_up()
    await host.networking.start()       # adopt the task sandboxes a previous daemon left (live restore)
    for server in host.side_servers:    # before the API: a client that finds the socket finds them up
        try:
            bound = await server.start()
        except OSError as e:
            raise DaemonError(f"the {server.name} cannot listen on {server.address}: {e.strerror or e}") from None
        log.info("%s listening on http://%s:%d/", server.name, *bound)
    async with asyncio.TaskGroup() as group:
        supervisor = Supervisor(group)
        supervisor.start("swarm", host.swarm.run())
        await api.start()
        log.info("daemon ready", extra={"socket": str(config.socket), "tcp": config.tcp,
                                        "data_dir": str(config.data_dir), "pid": os.getpid()})
        await stop.wait()
        log.info("shutting down", extra={"timeout": config.shutdown_timeout})
        deadline = asyncio.get_running_loop().time() + config.shutdown_timeout   # one bound for everything
        try:
            async with asyncio.timeout_at(deadline):
                for server in host.side_servers:
                    await server.stop()
                await api.stop()
        except TimeoutError:
            log.warning("API did not stop within the shutdown bound")
        await supervisor.stop(deadline)
    await host.networking.close()   # DNS servers stop; the data path stays up for the containers
    host.executor.close()  # the shim spawner; containers and their shims keep running (live restore)
    log.info("daemon stopped")


async def run_daemon(config: DaemonConfig) -> None:
    lock = DataDirLock(config.data_dir)
    lock.acquire()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("second signal: forcing exit", extra={"signal": signame})
            os._exit(EXIT_FORCED)
        log.info("signal received", extra={"signal": signame})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await serve(config, stop)
    finally:
        lock.release()


def main(config: DaemonConfig) -> None:
    import faulthandler

    import uvloop

    # SIGUSR1 writes every thread's stack to stderr (the daemon's log), even when the event loop
    # is blocked: the first thing to look at when a daemon stops answering.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    from manager.store.heap import tune_gc

    tune_gc()  # a manager holds a large, long-lived heap: collect young objects less often

    uvloop.run(run_daemon(config))
