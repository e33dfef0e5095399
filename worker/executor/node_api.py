"""The node-local container API in one call: `/containers/...` and `/exec/...` on a node's app.

`add_node_container_routes` builds the `LocalContainers` view of the executor and the exec
registry, registers both route sets, and has the app's cleanup cancel the detached execs.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from engineapi.http import Routes
from worker.executor import containers_api, exec_api
from worker.executor.exec_sessions import ExecRegistry
from worker.executor.executor import Executor
from worker.executor.local_containers import EventSink, LocalContainers


def add_node_container_routes(app: web.Application, routes: Routes, executor: Executor,
                              image_id: Callable[[str], str] = lambda ref: "",
                              on_event: EventSink | None = None) -> LocalContainers:
    containers = LocalContainers(executor, image_id, on_event)
    registry = ExecRegistry()
    containers_api.add_routes(routes, containers)
    exec_api.add_routes(routes, containers, registry)

    async def close_execs(_: web.Application) -> None:
        await registry.close()

    app.on_cleanup.append(close_execs)
    return containers
