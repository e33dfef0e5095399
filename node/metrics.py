"""The daemon's Prometheus metrics and the small local HTTP servers beside its API.

Theory of operation: a daemon started with `--metrics-addr` owns one `DaemonMetrics`: a
registry of its own (never prometheus_client's global one: tests run several daemons in one
process) holding the manager's families and collector (manager/metrics), the container start
latency its executor reports (worker/timed.py) and the API's request latency by route (a
middleware, outermost, so it sees the status of errors too). The families are fed by hooks the
components take as plain callables; state-like figures are read at scrape time.

`SideServer` serves one aiohttp app on a TCP address that defaults to loopback: `--metrics-addr
9323` binds 127.0.0.1:9323; a host must be named to listen elsewhere. It reports the bound
address once listening (port 0 picks a free port).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

from manager.dashboard import dashboard_app
from manager.metrics import ManagerCollector, ManagerMetrics, ManagerView
from manager.store import Store

DEFAULT_HOST = "127.0.0.1"
VERSION_PREFIX = "/v{api_version}"
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AddressError(ValueError):
    pass


def side_address(text: str, flag: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[V6]:PORT` → (host, port); a bare port binds loopback."""
    text = text.strip()
    host, port = DEFAULT_HOST, text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise AddressError(f"invalid {flag} {text!r}: expected PORT or HOST:PORT")
    if host and host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise AddressError(f"invalid {flag} {text!r}: {host!r} is not an IP address") from None
    return host or DEFAULT_HOST, int(port)


def route_of(request: web.Request) -> str:
    """The route template a request matched, without the API version prefix: "/services/{id}"."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical.removeprefix(VERSION_PREFIX) or "/"


class DaemonMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.manager = ManagerMetrics(self.registry)
        self.container_start_seconds = Histogram(
            "shoal_container_start_seconds", "Seconds the executor took to start a task's container.",
            registry=self.registry, buckets=START_BUCKETS)
        self.api_request_seconds = Histogram(
            "shoal_api_request_seconds", "Engine API requests: seconds to the response (to the end of a stream).",
            ["method", "route", "code"], registry=self.registry, buckets=API_BUCKETS)

    def watch_manager(self, runtime: Callable[[], ManagerView | None]) -> None:
        """Read the manager of the moment (None on a worker) at every scrape."""
        self.registry.register(ManagerCollector(runtime))

    def container_started(self, seconds: float) -> None:
        self.container_start_seconds.observe(seconds)

    def instrument_api(self, app: web.Application) -> None:
        """Time every API request by method, route and status (outermost middleware)."""
        histogram = self.api_request_seconds

        @web.middleware
        async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
            began = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as e:
                status = e.status
                raise
            finally:
                histogram.labels(request.method, route_of(request), str(status)).observe(time.perf_counter() - began)

        app.middlewares.insert(0, timed)

    def exposition_app(self) -> web.Application:
        registry = self.registry

        async def metrics(_: web.Request) -> web.Response:
            response = web.Response(body=generate_latest(registry))
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app


class SideServer:
    """One aiohttp app on one TCP address, started and stopped with the daemon."""

    def __init__(self, name: str, app: web.Application, address: tuple[str, int]) -> None:
        self.name = name
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        self._host, self._port = address
        self.bound: tuple[str, int] | None = None

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    async def start(self) -> tuple[str, int]:
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except BaseException:
            await self._runner.cleanup()
            raise
        host, port = self._runner.addresses[0][:2]
        self.bound = (str(host), int(port))
        return self.bound

    async def stop(self) -> None:
        """Stop listening and end the open streams (idempotent)."""
        if self.bound is not None:
            self.bound = None
            await self._runner.cleanup()


def side_servers(metrics: DaemonMetrics | None, metrics_addr: str, dashboard_addr: str,
                 store_of: Callable[[], Store | None], leader_of: Callable[[], str]) -> list[SideServer]:
    """The metrics endpoint and the dashboard, each only when its address is given."""
    servers: list[SideServer] = []
    if metrics is not None and metrics_addr:
        address = side_address(metrics_addr, "--metrics-addr")
        servers.append(SideServer("metrics", metrics.exposition_app(), address))
    if dashboard_addr:
        address = side_address(dashboard_addr, "--dashboard-addr")
        servers.append(SideServer("dashboard", dashboard_app(store_of, leader_of), address))
    return servers
