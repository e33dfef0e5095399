"""`docker run` on the worker of a lab swarm (1 manager + 1 worker), with the real docker CLI as a
user types it on that node: `docker run --rm busybox echo hi` prints `hi`; `-it sh` through a
pty; a local bridge network on which two containers reach each other by name; the standalone
containers stay out of the swarm (the manager's `docker node ps` lists no task for them, the
worker's `docker ps` lists them beside nothing else)."""

from __future__ import annotations

import asyncio
import json

from cli.lab import Lab
from tests.compat.test_docker_cli_node_containers import docker
from tests.support.pty_session import PtySession

WORKER = "worker-1"


async def interactive(lab: Lab) -> tuple[int, bytes]:
    async with PtySession(lab.exec_argv(WORKER, ["docker", "run", "--rm", "-it", "busybox", "sh"]),
                          timeout=30) as sh:
        await sh.send(b"echo in-$((40+2)); hostname\r")
        await sh.expect(b"in-42")
        await sh.send(b"exit 7\r")
        return await sh.wait(), sh.output


def test_docker_run_on_a_lab_worker(docker_lab: Lab) -> None:
    lab = docker_lab
    assert docker(lab, WORKER, "run", "--rm", "busybox", "echo", "hi") == "hi\n"
    code, screen = asyncio.run(interactive(lab))
    assert code == 7, screen

    docker(lab, WORKER, "network", "create", "--subnet", "10.77.0.0/24", "lan")
    server = docker(lab, WORKER, "run", "-d", "--name", "server", "--network", "lan", "busybox",
                    "sleep", "100000").strip()
    out = docker(lab, WORKER, "run", "--rm", "--network", "lan", "busybox", "sh", "-c",
                 "ping -c 1 -W 5 server >/dev/null && echo reached-server")
    assert out == "reached-server\n"
    inspected = json.loads(docker(lab, WORKER, "inspect", "server"))[0]
    assert inspected["NetworkSettings"]["Networks"]["lan"]["IPAddress"] == "10.77.0.2"
    listed = docker(lab, WORKER, "ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}")
    assert listed.splitlines() == [f"{server} server"]
    assert docker(lab, "manager-1", "node", "ps", "--format", "{{.Name}}", WORKER).strip() == ""
    assert "lan" not in docker(lab, "manager-1", "network", "ls", "--format", "{{.Name}}").split()

    docker(lab, WORKER, "rm", "-f", "server")
    docker(lab, WORKER, "network", "rm", "lan")
    assert docker(lab, WORKER, "ps", "-aq") == ""
