"""Container events the executor itself causes, on the node's event bus as `docker events` reads
them: `health_status: healthy` / `health_status: unhealthy` when a health check's status changes,
and `oom` (before `die`) when the kernel OOM-killed in the container's memory cgroup. Real runc
containers run as tasks through the same wrappers the daemon uses."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engineapi.events import EventBus
from engineapi.http import Routes
from model import TaskState
from tests.executor.conftest import needs_root_and_runc
from tests.executor.test_task_executor import run_task
from tests.executor.test_task_executor import task_executor as task_executor
from worker.executor import Executor
from worker.executor.container_events import EventfulTaskExecutor
from worker.executor.node_api import add_node_container_routes, container_publisher
from worker.executor.task_executor import RuncTaskExecutor

pytestmark = needs_root_and_runc()


def actions(bus: EventBus, cid: str) -> list[str]:
    history, sub = bus.subscribe()
    sub.close()
    return [e["Action"] for e in history if e["Actor"]["ID"] == cid]


async def test_health_status_and_oom_events(executor: Executor, task_executor: RuncTaskExecutor) -> None:
    bus = EventBus()
    app = web.Application()
    add_node_container_routes(app, Routes(app), executor, bus=bus)      # what the daemon wires
    tx: Any = EventfulTaskExecutor(task_executor, executor, container_publisher(bus))

    healthy = "task00000000000000000000h1"
    final, _ = await run_task(tx, healthy, {"ContainerSpec": {
        "Image": "busybox:latest", "Args": ["sh", "-c", "sleep 0.5"],
        "Healthcheck": {"Test": ["CMD", "true"], "Interval": 100_000_000, "Timeout": 1_000_000_000}}})
    assert final.state == TaskState.COMPLETE, final
    seen = actions(bus, healthy)
    assert seen.count("health_status: healthy") == 1 and "health_status: unhealthy" not in seen, seen
    assert seen.index("health_status: healthy") < seen.index("die"), seen
    event = next(e for e in bus.subscribe()[0] if e["Action"] == "health_status: healthy")
    assert event["Type"] == "container" and event["Actor"]["Attributes"]["image"] == "busybox:latest"

    sick = "task00000000000000000000s1"
    final, _ = await run_task(tx, sick, {"ContainerSpec": {"Image": "busybox:sick", "StopGracePeriod": 100_000_000}})
    assert final.state == TaskState.FAILED
    assert "health_status: unhealthy" in actions(bus, sick)

    oom = "task00000000000000000000o1"
    final, _ = await run_task(tx, oom, {"ContainerSpec": {"Image": "busybox:latest", "Args": ["tail", "/dev/zero"]},
                                        "Resources": {"Limits": {"MemoryBytes": 16 * 1024 * 1024}}})
    assert final.state == TaskState.FAILED
    seen = actions(bus, oom)
    assert "oom" in seen and seen.index("oom") == seen.index("die") - 1, seen
    assert "oom" not in actions(bus, healthy)
