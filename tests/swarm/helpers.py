"""Helpers for swarm tests on the lab: API calls to a node's daemon, and waits with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cli.client import ApiResponseError, DaemonClient
from cli.lab import Lab

T = TypeVar("T")
API_TIMEOUT = 30.0


def api(lab: Lab, node: str, method: str, path: str, body: Any = None, **params: Any) -> Any:
    async def go() -> Any:
        async with DaemonClient(lab.node(node).host, timeout=10) as c:
            return (await c.request(method, path, params=params or None, body=body))[1]

    async def bounded() -> Any:
        return await asyncio.wait_for(go(), API_TIMEOUT)  # a hung API call fails the test

    return asyncio.run(bounded())


def api_error(lab: Lab, node: str, method: str, path: str, body: Any = None, **params: Any) -> ApiResponseError:
    try:
        api(lab, node, method, path, body, **params)
    except ApiResponseError as e:
        return e
    raise AssertionError(f"{method} {path} on {node} unexpectedly succeeded")


def eventually(check: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll `check` (exceptions count as not yet) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # the cluster may be between states
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def nodes_by_host(lab: Lab, via: str) -> dict[str, dict[str, Any]]:
    return {n["Description"]["Hostname"]: n for n in api(lab, via, "GET", "/nodes")}


def leader_host(lab: Lab, via: str) -> str:
    for host, n in nodes_by_host(lab, via).items():
        if (n.get("ManagerStatus") or {}).get("Leader"):
            return host
    return ""


def set_heartbeat(lab: Lab, via: str, seconds: float) -> None:
    cluster = api(lab, via, "GET", "/swarm")
    spec = cluster["Spec"]
    spec["Dispatcher"]["HeartbeatPeriod"] = int(seconds * 1e9)
    api(lab, via, "POST", "/swarm/update", spec, version=cluster["Version"]["Index"])


def node_update(lab: Lab, via: str, ref: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Read-modify-write of a node's spec, retried (as a careful client does) when the node
    changed in between (e.g. its agent reconnected): "update out of sequence"."""
    for attempt in range(5):
        node = api(lab, via, "GET", f"/nodes/{ref}")
        spec = node["Spec"]
        change(spec)
        try:
            api(lab, via, "POST", f"/nodes/{node['ID']}/update", spec, version=node["Version"]["Index"])
            return
        except ApiResponseError as e:
            if "update out of sequence" not in e.message or attempt == 4:
                raise


def load_busybox_everywhere(lab: Lab, directory: Path, tag: str = "busybox:latest") -> None:
    """Build the busybox test image (no health check) and load it into every lab host."""
    from cli.lab import demo
    from worker.images.busybox_image import build_busybox_image, write_docker_save

    archive = write_docker_save(build_busybox_image(healthcheck={}), directory / "busybox.tar", [tag]).read_bytes()

    async def load_all() -> None:
        await asyncio.gather(*(demo.load_image(n.host, archive) for n in lab.nodes.values()))

    asyncio.run(load_all())


@contextlib.contextmanager
def swarm_lab(prefix: str, image_dir: Path, *, managers: int = 1, workers: int = 1,
              image: str = "busybox:latest") -> Iterator[Lab]:
    """A lab with a formed swarm and the busybox test image on every host, for a module of tests
    (named `<prefix><pid>`); always torn down."""
    from tests.conftest import needs_root

    needs_root()
    lab = Lab(f"{prefix}{os.getpid() % 100000:05d}")
    lab.down()
    try:
        lab.up(managers=managers, workers=workers, swarm=True)
        load_busybox_everywhere(lab, image_dir, image)
        yield lab
    finally:
        lab.down()


def host_of(lab: Lab, task: dict[str, Any], via: str = "manager-1") -> str:
    """The hostname of the node a task is on."""
    nodes = {n["ID"]: n["Description"]["Hostname"] for n in api(lab, via, "GET", "/nodes")}
    return str(nodes[task["NodeID"]])


def in_task(lab: Lab, task: dict[str, Any], argv: list[str], timeout: float = 30,
            via: str = "manager-1") -> subprocess.CompletedProcess[str]:
    """Run `argv` inside the task's container (runc exec: its namespaces, its /etc/resolv.conf).
    Bound waits with busybox's `timeout`: busybox-static 1.35's `wget -T` crashes (SIGSEGV), which
    would pass a "cannot reach" check for the wrong reason."""
    node = lab.node(host_of(lab, task, via))
    runc_root = Path(node.data_dir) / "run" / "runc"
    return lab.exec(node.name, ["runc", "--root", str(runc_root), "exec", task["ID"], *argv], timeout=timeout)


def running(lab: Lab, service: str, via: str = "manager-1") -> list[dict[str, Any]]:
    """The service's tasks observed running and desired running."""
    tasks = api(lab, via, "GET", "/tasks", filters={"service": [service], "desired-state": ["running"]})
    return [t for t in tasks if t["Status"]["State"] == "running"]


def converged(lab: Lab, service: str, count: int, timeout: float = 60.0,
              via: str = "manager-1") -> list[dict[str, Any]]:
    """The service's running tasks once there are exactly `count` of them."""
    return eventually(lambda: (lambda r: r if len(r) == count else [])(running(lab, service, via)), timeout=timeout,
                      what=f"{count} running tasks of {service}")
