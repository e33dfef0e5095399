"""System endpoints: `/_ping`, `/version`, `/info`.

They answer on every node, manager or worker, in or out of a swarm. What they report about the
swarm comes from a `SwarmInfoSource`, so the same handlers serve a bare daemon and a manager.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Protocol

from aiohttp import web

from engineapi.http import (
    API_VERSION,
    MIN_API_VERSION,
    SERVER_VERSION,
    Routes,
    json_response,
    machine_arch,
)


class SwarmInfoSource(Protocol):
    def swarm_info(self) -> dict[str, Any]:
        """The `Swarm` object of `GET /info`."""
        ...

    def swarm_state(self) -> str:
        """The `Swarm` header of `/_ping`: inactive, pending, error, locked, active/worker, active/manager."""
        ...


SWARM_INFO = web.AppKey("swarm_info", SwarmInfoSource)
DATA_DIR = web.AppKey("data_dir", str)
HOSTNAME = web.AppKey("hostname", str)


def meminfo_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


async def ping(request: web.Request) -> web.Response:
    headers = {
        "Swarm": request.app[SWARM_INFO].swarm_state(),
        "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache",
        "Builder-Version": "1",
    }
    if request.method == "HEAD":
        return web.Response(status=200, headers=headers, content_type="text/plain")
    return web.Response(status=200, text="OK", headers=headers)


def version_body() -> dict[str, Any]:
    kernel = platform.release()
    engine = {
        "Version": SERVER_VERSION,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "shoal",
        "GoVersion": f"python{platform.python_version()}",
        "Os": "linux",
        "Arch": "amd64" if machine_arch() == "x86_64" else machine_arch(),
        "KernelVersion": kernel,
        "Experimental": False,
        "BuildTime": "",
    }
    return {
        "Platform": {"Name": "shoal"},
        "Components": [{"Name": "Engine", "Version": SERVER_VERSION, "Details": {
            k: str(v) for k, v in engine.items() if k not in ("Version",)
        }}],
        **engine,
    }


async def version(request: web.Request) -> web.Response:
    return json_response(version_body())


async def info(request: web.Request) -> web.Response:
    body = {
        "ID": "",
        "Name": request.app[HOSTNAME],
        "ServerVersion": SERVER_VERSION,
        "OperatingSystem": _os_name(),
        "OSType": "linux",
        "OSVersion": "",
        "Architecture": machine_arch(),
        "KernelVersion": platform.release(),
        "NCPU": os.cpu_count() or 1,
        "MemTotal": meminfo_total(),
        "DockerRootDir": request.app[DATA_DIR],
        "Driver": "overlay",
        "CgroupDriver": "cgroupfs",
        "DefaultRuntime": "runc",
        "Runtimes": {"runc": {"path": "runc"}},
        "LoggingDriver": "k8s-file",
        "Containers": 0,
        "ContainersRunning": 0,
        "ContainersPaused": 0,
        "ContainersStopped": 0,
        "Images": 0,
        "Labels": [],
        "ExperimentalBuild": False,
        "Warnings": None,
        "Swarm": request.app[SWARM_INFO].swarm_info(),
    }
    return json_response(body)


def add_routes(routes: Routes) -> None:
    routes.add("GET", "/_ping", ping)
    routes.add("HEAD", "/_ping", ping)
    routes.add("GET", "/version", version)
    routes.add("GET", "/info", info)
