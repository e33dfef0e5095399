"""`docker run` against a real `shoal daemon` (the routes as the daemon wires them, its image
store): --rm prints the output, a detached container with a name runs on, the daemon's
container events show the run; the node then joins a swarm of its own and its standalone
containers stay out of the swarm (no task adopts them, leaving it keeps them); across a daemon restart a running
container runs on under its shim and is listed again, and an --rm container that exited while
no daemon watched is removed at the start."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli.client import DaemonClient
from tests.daemon.test_swarm_leave_tasks import alive, load_busybox
from tests.executor.conftest import needs_root_and_runc
from tests.support.daemon import DaemonProcess, start_daemon, stop_daemon
from tests.support.wait import free_port, wait_until

pytestmark = needs_root_and_runc()

KEEPER = ["sh", "-c", "trap 'exit 0' TERM; echo kept; sleep 100000 & wait"]


def docker(d: DaemonProcess, home: Path, *args: str, ok: bool = True) -> tuple[int, str, str]:
    env = {**os.environ, "DOCKER_HOST": d.host, "DOCKER_CONFIG": str(home)}
    proc = subprocess.run([shutil.which("docker") or "/usr/local/bin/docker", *args], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if ok:
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc.returncode, proc.stdout, proc.stderr


def graceful_stop(d: DaemonProcess) -> None:
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(30)


def test_docker_run_on_a_daemon_in_and_out_of_a_swarm_and_across_its_restart(tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is not installed (deploy/install.sh installs it)")
    home = tmp_path / "cfg"
    d = start_daemon(tmp_path)
    try:
        async def load() -> None:
            async with DaemonClient(d.host) as c:
                await load_busybox(c, tmp_path)

        asyncio.run(load())
        since = f"{time.time() - 1:.3f}"
        assert docker(d, home, "run", "--rm", "busybox", "echo", "hi")[1] == "hi\n"
        keeper = docker(d, home, "run", "-d", "--name", "keeper", "busybox", *KEEPER)[1].strip()
        brief = docker(d, home, "run", "-d", "--rm", "-i", "--name", "brief", "busybox", "cat")[1].strip()
        wait_until(lambda: docker(d, home, "logs", "keeper")[1] == "kept\n", what="keeper's log line")
        _, out, _ = docker(d, home, "events", "--since", since, "--until", f"{time.time():.3f}",
                           "--filter", "type=container", "--format", "{{.Action}} {{.Actor.Attributes.name}}")
        seen = [tuple(line.split()[:2]) for line in out.splitlines()]
        for event in (("create", "keeper"), ("start", "keeper"), ("start", "brief")):
            assert event in seen, out
        assert [a for a, name in seen if name not in ("keeper", "brief")][-2:] == ["die", "destroy"], out

        port = free_port()
        docker(d, home, "swarm", "init", "--advertise-addr", f"127.0.0.1:{port}", "--listen-addr",
               f"127.0.0.1:{port}")
        docker(d, home, "service", "create", "--detach", "--name", "web", "busybox", *KEEPER)
        wait_until(lambda: len(docker(d, home, "ps", "-q")[1].split()) == 3, timeout=60,
                   what="the service's task running beside the two standalone containers")
        _, out, _ = docker(d, home, "node", "ps", "--format", "{{.Name}}", "self")
        assert out.split() == ["web.1"]                  # the swarm sees its task only
        _, out, _ = docker(d, home, "ps", "--filter", "is-task=false", "--format", "{{.Names}}")
        assert sorted(out.split()) == ["brief", "keeper"]
        docker(d, home, "swarm", "leave", "--force")     # takes its task's container, not these
        _, out, _ = docker(d, home, "ps", "-a", "--format", "{{.Names}}")
        assert sorted(out.split()) == ["brief", "keeper"]

        brief_pid = json.loads(docker(d, home, "inspect", "brief")[1])[0]["State"]["Pid"]
        graceful_stop(d)
        os.kill(brief_pid, signal.SIGKILL)               # it exits while no daemon watches
        wait_until(lambda: not alive(brief_pid), what="brief's process gone")
        d = start_daemon(tmp_path)
        _, out, _ = docker(d, home, "ps", "-a", "--no-trunc", "--filter", "is-task=false",
                           "--format", "{{.ID}} {{.Names}} {{.State}}")
        assert out.splitlines() == [f"{keeper} keeper running"]      # brief was removed at the start
        assert brief not in docker(d, home, "ps", "-aq", "--no-trunc")[1]
        docker(d, home, "stop", "-t", "5", "keeper")
        _, out, _ = docker(d, home, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "keeper")
        assert out.split() == ["exited", "0"]
        docker(d, home, "start", "keeper")
        wait_until(lambda: docker(d, home, "logs", "keeper")[1] == "kept\nkept\n", what="the second run's log")
        docker(d, home, "rm", "-f", "keeper")
        assert docker(d, home, "ps", "-aq")[1] == ""
    finally:
        stop_daemon(d)
