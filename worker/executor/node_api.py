"""The node-local container API in one call: `/containers/...` and `/exec/...` on a node's app.

`add_node_container_routes` builds the `LocalContainers` view of the executor and the exec
registry, registers both route sets, has the app's cleanup cancel the detached execs, hands
the executor's recorded container exits to the registry (the container's execs end with it), and
publishes what the API does to containers (kill, stop, destroy, exec_*) and the executor's own
container events (health_status) on the node's event bus;
`container_publisher` is what the task executor's events wrapper publishes with.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from engineapi.events import EventBus, message
from engineapi.http import Routes
from worker.executor import containers_api, exec_api
from worker.executor.container_events import Publish, describe
from worker.executor.container_view import ContainerView
from worker.executor.exec_sessions import ExecRegistry
from worker.executor.executor import Executor
from worker.executor.local_containers import LocalContainers


def container_publisher(bus: EventBus) -> Publish:
    def publish(action: str, cid: str, attributes: dict[str, str]) -> None:
        bus.publish(message("container", action, cid, attributes))
    return publish


def add_node_container_routes(app: web.Application, routes: Routes, executor: Executor,
                              image_id: Callable[[str], str] = lambda ref: "",
                              bus: EventBus | None = None) -> LocalContainers:
    def on_event(action: str, view: ContainerView, extra: dict[str, str]) -> None:
        if bus is not None:
            attributes = {**view.labels, "image": view.config.image, "name": view.name, **extra}
            bus.publish(message("container", action, view.id, attributes))

    containers = LocalContainers(executor, image_id, on_event)
    if bus is not None:           # health_status events of every container
        publish = container_publisher(bus)
        executor.on_event = lambda action, cid: publish(action, cid, describe(executor, cid))
    registry = ExecRegistry()
    executor.on_exit = registry.container_exited      # an exec ends with its container, as dockerd's
    containers_api.add_routes(routes, containers, registry.of_container)
    exec_api.add_routes(routes, containers, registry)

    async def close_execs(_: web.Application) -> None:
        await registry.close()

    app.on_cleanup.append(close_execs)
    return containers
