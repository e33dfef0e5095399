"""The lab's demo: a busybox image loaded on every host and a replicated web service.

The image is built in-process from the host's busybox-static (nothing is downloaded), saved as
a docker-save archive and loaded into each daemon through the Engine API (`POST /images/load`).
The service runs busybox's httpd on port 8080 in every replica.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from cli.client import DaemonClient
from worker.images.busybox_image import build_busybox_image, write_docker_save

DEMO_IMAGE = "shoal/demo:latest"
DEMO_SERVICE = "demo"
DEMO_PORT = 8080


def demo_service_spec(replicas: int) -> dict[str, Any]:
    return {
        "Name": DEMO_SERVICE,
        "TaskTemplate": {"ContainerSpec": {
            "Image": DEMO_IMAGE,
            "Args": ["sh", "-c", f"echo \"hello from $(hostname)\" > /tmp/index.html; "
                                 f"exec httpd -f -p {DEMO_PORT} -h /tmp"]}},
        "Mode": {"Replicated": {"Replicas": replicas}},
        "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": DEMO_PORT, "PublishedPort": DEMO_PORT}]},
    }


def build_demo_archive(directory: Path) -> Path:
    image = build_busybox_image(directory, cmd=["httpd", "-f", "-p", str(DEMO_PORT)], healthcheck={},
                                labels={"org.shoal.demo": "true"})
    return write_docker_save(image, directory / "demo-image.tar", [DEMO_IMAGE])


async def load_image(host: str, archive: bytes) -> None:
    async with DaemonClient(host) as c:
        await c.request("POST", "/images/load", data=archive,
                        headers={"Content-Type": "application/x-tar"})


async def deploy_demo(manager_host: str, replicas: int, timeout: float = 60.0) -> int:
    """Create the demo service and wait until its replicas run; returns how many run."""
    async with DaemonClient(manager_host) as c:
        await c.post("/services/create", demo_service_spec(replicas))
        deadline = time.monotonic() + timeout
        running = 0
        while time.monotonic() < deadline:
            tasks = await c.get("/tasks", filters={"service": [DEMO_SERVICE], "desired-state": ["running"]})
            running = sum(1 for t in tasks if t["Status"]["State"] == "running")
            if running >= replicas:
                break
            await asyncio.sleep(0.2)
        return running
