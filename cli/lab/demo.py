"""The lab's demo: a busybox image loaded on every host and a replicated web service.

The image is built in-process from the host's busybox-static (nothing is downloaded), saved as
a docker-save archive and loaded into each daemon through the Engine API (`POST /images/load`).
The service runs busybox's httpd in every replica, published on port 8080 of every host through
the routing mesh; `mesh_answer` shows it answering through a host that runs none of its tasks.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class MeshAnswer:
    via: str        # the host the request went to (one running none of the demo's tasks, if any)
    address: str
    client: str     # the host the request came from
    body: str
    idle: bool      # `via` runs none of the demo's tasks


FETCH = ("import sys, urllib.request\n"
         "try:\n"
         "    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())\n"
         "except OSError as e:\n"
         "    print(f'error: {e}', file=sys.stderr); sys.exit(1)\n")


async def mesh_answer(lab: Any, timeout: float = 30.0) -> MeshAnswer:
    """GET the demo's published port on a host that runs none of its tasks, from another host
    (retried until the mesh on that host has the tasks, within `timeout`)."""
    manager = lab.node("manager-1")
    async with DaemonClient(manager.host) as c:
        nodes = {n["ID"]: n["Description"]["Hostname"] for n in await c.get("/nodes")}
        tasks = await c.get("/tasks", filters={"service": [DEMO_SERVICE], "desired-state": ["running"]})
    busy = {nodes.get(t.get("NodeID", ""), "") for t in tasks}
    names = list(lab.nodes)
    via = next((n for n in names if n not in busy), names[-1])
    client = next((n for n in names if n != via), via)
    url = f"http://{lab.node(via).address}:{DEMO_PORT}/"
    deadline = time.monotonic() + timeout
    while True:
        proc = await asyncio.to_thread(subprocess.run, lab.exec_argv(client, [sys.executable, "-c", FETCH, url]),
                                       capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    if proc.returncode != 0:
        raise RuntimeError(f"{url} did not answer from {client}: {proc.stderr.strip()}")
    return MeshAnswer(via, lab.node(via).address, client, proc.stdout.strip(), via not in busy)
