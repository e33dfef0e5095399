"""`docker run` of standalone containers on a node, with the real docker CLI (28.2.2) against the
node-local API served in the test's own event loop over real runc containers: --rm with the
output and the exit code, -d and --name, -e/-w/-u/-v, piped stdin with -i, -it through a pty,
start/stop/restart/rename/prune/attach, and the 400/404/409 answers. The image is a fake image
source over the busybox layer the executor tests build (no image store, nothing downloaded)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engineapi.events import EventBus
from engineapi.http import Routes, new_app
from tests.api.support import serve_unix
from tests.executor.conftest import needs_root_and_runc
from tests.executor.test_container_api import DOCKER, Docker
from tests.support.pty_session import PtySession
from tests.support.wait import async_wait_until
from worker.executor import Executor
from worker.executor.controller import ContainerController
from worker.executor.local_containers import LocalContainers
from worker.executor.node_api import add_node_container_routes
from worker.images.errors import ImageNotFound
from worker.standalone import api as standalone_api
from worker.standalone.containers import StandaloneContainers

pytestmark = needs_root_and_runc()


class BusyboxImages:
    """An image source with one image, busybox:latest, over the test layer."""

    def __init__(self, layer: Path) -> None:
        self.layer = layer

    def get(self, name: str) -> str:
        if name not in ("busybox", "busybox:latest"):
            raise ImageNotFound(name if ":" in name else name + ":latest")
        return "busybox:latest"

    def rootfs_layers(self, image: Any) -> list[Path]:
        return [self.layer]

    def image_config(self, image: Any) -> dict[str, Any]:
        return {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": {"org.test.image": "busybox"}}


@contextlib.asynccontextmanager
async def served(executor: Executor, busybox_layer: Path,
                 tmp_path: Path) -> AsyncIterator[tuple[Docker, LocalContainers]]:
    """The node-local API with standalone containers on a socket; the docker CLI for it, and the
    containers object behind it."""
    app = new_app()
    routes = Routes(app)
    containers = add_node_container_routes(app, routes, executor, lambda ref: "sha256:" + "cd" * 32, EventBus())
    standalone_api.add_routes(app, routes, StandaloneContainers(containers, BusyboxImages(busybox_layer)))
    async with serve_unix(app, tmp_path / "api.sock") as host:
        yield Docker(host, tmp_path / "cfg"), containers


@pytest.fixture
async def docker(executor: Executor, busybox_layer: Path, tmp_path: Path) -> AsyncIterator[Docker]:
    async with served(executor, busybox_layer, tmp_path) as (cli, _):
        yield cli


async def ids(docker: Docker, *args: str) -> list[str]:
    return (await docker.run("ps", "-aq", "--no-trunc", *args))[1].split()


async def test_run_rm_prints_the_output_and_leaves_nothing(docker: Docker) -> None:
    _, out, err = await docker.run("run", "--rm", "busybox", "echo", "hi")
    assert (out, err) == ("hi\n", "")
    code, out, err = await docker.run("run", "--rm", "busybox", "sh", "-c", "echo to-out; echo to-err >&2; exit 3",
                                      ok=False)
    assert (code, out, err) == (3, "to-out\n", "to-err\n")
    assert await ids(docker) == []


async def test_run_options_env_workdir_user_volume(docker: Docker, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host").write_text("host says hi\n")
    _, out, _ = await docker.run("run", "--rm", "-e", "GREETING=hello", "-w", "/tmp", "-u", "nobody",
                                 "-v", f"{shared}:/mnt", "busybox", "sh", "-c",
                                 "echo $GREETING $PWD $(id -u); cat /mnt/from-host")
    assert out == "hello /tmp 1000\nhost says hi\n"
    _, out, _ = await docker.run("run", "--rm", "-v", f"{shared}:/mnt:ro", "busybox", "sh", "-c",
                                 "touch /mnt/x 2>/dev/null && echo writable || echo read-only")
    assert out == "read-only\n"
    made = tmp_path / "made-by-run"
    await docker.run("run", "--rm", "-v", f"{made}:/out", "busybox", "sh", "-c", "echo written > /out/f")
    assert (made / "f").read_text() == "written\n"          # a missing -v directory is made, as dockerd does
    _, out, _ = await docker.run("run", "--rm", "-i", "busybox", "sh", "-c", "tr a-z A-Z", stdin=b"piped in\n")
    assert out == "PIPED IN\n"


async def test_run_detached_with_a_name_then_stop_start_restart_rename_rm(docker: Docker) -> None:
    _, out, _ = await docker.run("run", "-d", "--name", "sleeper", "busybox", "sh", "-c",
                                 "trap 'exit 0' TERM; echo up; sleep 100 & wait")
    cid = out.strip()
    assert len(cid) == 64
    _, out, _ = await docker.run("ps", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Image}} {{.Command}}")
    assert out.split()[:3] == [cid, "sleeper", "busybox"]
    doc = json.loads((await docker.run("inspect", "sleeper"))[1])[0]
    assert doc["Name"] == "/sleeper" and doc["State"]["Running"] and doc["Config"]["Image"] == "busybox"
    assert doc["HostConfig"]["AutoRemove"] is False and doc["Config"]["Labels"] == {"org.test.image": "busybox"}
    assert doc["Config"]["Cmd"] == ["sh", "-c", "trap 'exit 0' TERM; echo up; sleep 100 & wait"]
    code, _, err = await docker.run("run", "-d", "--name", "sleeper", "busybox", "true", ok=False)
    assert code == 125 and 'The container name "/sleeper" is already in use by container' in err

    await docker.run("stop", "-t", "5", "sleeper")
    _, out, _ = await docker.run("ps", "-a", "--format", "{{.Names}} {{.Status}}")
    assert out.startswith("sleeper Exited (")
    await docker.run("start", "sleeper")

    async def logged_twice() -> bool:       # start returns before the shell printed
        return (await docker.run("logs", "sleeper"))[1] == "up\nup\n"    # the same container ran twice: one log
    await async_wait_until(logged_twice, timeout=20, what="the restarted shell's line in the one log")
    await docker.run("restart", "-t", "5", "sleeper")
    _, out, _ = await docker.run("inspect", "-f", "{{.State.Running}}", "sleeper")
    assert out.strip() == "true"
    await docker.run("rename", "sleeper", "dozer")
    _, out, _ = await docker.run("ps", "--format", "{{.ID}} {{.Names}}", "--no-trunc")
    assert out.split() == [cid, "dozer"]
    code, _, err = await docker.run("rm", "dozer", ok=False)
    assert code == 1 and "container is running" in err
    await docker.run("rm", "-f", "dozer")
    assert await ids(docker) == []


async def test_run_it_sh_through_a_pty(docker: Docker) -> None:
    async with PtySession([DOCKER, "run", "--rm", "-it", "busybox", "sh"], env=docker.env, timeout=30) as sh:
        await sh.send(b"echo tty-$((6*7)); tty\r")
        screen = await sh.expect(b"tty-42")
        await sh.expect(b"/dev/pts/")
        await sh.send(b"stty size\r")
        await sh.expect(b"24 80")
        await sh.send(b"exit 4\r")
        code = await sh.wait()
    assert code == 4, screen
    assert await ids(docker) == []


async def test_attach_to_a_running_container_and_prune(docker: Docker) -> None:
    _, out, _ = await docker.run("run", "-d", "-i", "--name", "echoer", "busybox", "sh", "-c",
                                 "while read line; do echo got-$line; done; echo bye")
    proc = await asyncio.create_subprocess_exec(
        DOCKER, "attach", "echoer", env=docker.env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    async with asyncio.timeout(30):
        proc.stdin.write(b"one\n")
        assert await proc.stdout.readline() == b"got-one\n"
        proc.stdin.close()                                  # stdin ends: the loop ends
        rest, _ = await proc.communicate()
    assert rest == b"bye\n" and proc.returncode == 0
    await docker.run("run", "--name", "done", "busybox", "sh", "-c", "head -c 3000 /dev/zero > /blob")
    _, out, _ = await docker.run("ps", "-a", "--format", "{{.Names}}")
    assert sorted(out.split()) == ["done", "echoer"]
    _, out, _ = await docker.run("container", "prune", "-f")
    assert out.count("\n") >= 3 and await ids(docker) == []
    assert "Total reclaimed space: 3kB" in out          # the writable layers' bytes (/blob's)


async def test_bad_input(docker: Docker) -> None:
    code, _, err = await docker.run("run", "--pull", "never", "nosuch", ok=False)
    assert code == 125 and "No such image: nosuch:latest" in err
    code, _, err = await docker.run("run", "--name", "bad name", "busybox", "true", ok=False)
    assert code == 125 and "Invalid container name (bad name)" in err
    code, _, err = await docker.run("run", "--restart", "always", "busybox", "true", ok=False)
    assert code == 125 and "restart policy 'always' is not supported" in err
    code, _, err = await docker.run("run", "-v", "relative/dir:/mnt", "busybox", "true", ok=False)
    assert code == 125 and "includes invalid characters for a local volume name" in err
    code, _, err = await docker.run("run", "--network", "nosuchnet", "busybox", "true", ok=False)
    assert code == 125 and "network nosuchnet not found" in err
    code, _, err = await docker.run("run", "--rm", "-u", "nosuchuser", "busybox", "true", ok=False)
    assert code == 125 and "unable to find user nosuchuser" in err
    code, _, err = await docker.run("run", "-p", "8080:80", "busybox", "true", ok=False)
    assert code == 125 and "publishing ports (-p) (HostConfig.PortBindings) is not supported" in err
    code, _, err = await docker.run("start", "nosuch", ok=False)
    assert code == 1 and "No such container: nosuch" in err
    code, _, err = await docker.run("rename", "nosuch", "other", ok=False)
    assert code == 1 and "No such container: nosuch" in err
    assert await ids(docker) == []


async def test_create_then_start_attached_and_again(docker: Docker) -> None:
    await docker.run("run", "--name", "once", "busybox", "sh", "-c", "echo ran")
    _, out, _ = await docker.run("start", "-a", "once")          # an exited container, attached again
    assert out == "ran\n"
    _, out, _ = await docker.run("logs", "once")
    assert out == "ran\nran\n"
    _, out, _ = await docker.run("create", "-i", "--name", "catter", "busybox", "cat")
    _, out, _ = await docker.run("start", "-ai", "catter", stdin=b"through stdin\n")
    assert out == "through stdin\n"
    _, out, _ = await docker.run("ps", "-a", "--format", "{{.Names}} {{.Status}}")
    assert sorted(line.split(" (")[0] for line in out.splitlines()) == ["catter Exited", "once Exited"]
    await docker.run("rm", "once", "catter")


async def test_run_it_detach_with_ctrl_p_ctrl_q_and_attach_again(docker: Docker) -> None:
    async with PtySession([DOCKER, "run", "-it", "--name", "shell", "busybox", "sh"], env=docker.env, timeout=30) as sh:
        await sh.send(b"echo first-$((1+1))\r")
        await sh.expect(b"first-2")
        await sh.send(b"\x10\x11")                     # ctrl-p ctrl-q: the CLI detaches, the shell runs on
        assert await sh.wait() == 0
    _, out, _ = await docker.run("ps", "--format", "{{.Names}} {{.State}}")
    assert out == "shell running\n"
    async with PtySession([DOCKER, "attach", "shell"], env=docker.env, timeout=30) as sh:
        await sh.send(b"echo again-$((2+1))\r")
        await sh.expect(b"again-3")
        await sh.send(b"exit 6\r")
        assert await sh.wait() == 6
    await docker.run("rm", "shell")


async def test_restart_of_an_rm_container_keeps_it_and_a_stop_removes_it(docker: Docker) -> None:
    cid = (await docker.run("run", "-d", "--rm", "--name", "ephemeral", "busybox", "sh", "-c",
                            "trap 'exit 0' TERM; sleep 1000 & wait"))[1].strip()
    await docker.run("restart", "-t", "5", "ephemeral")
    await docker.run("restart", "-t", "5", "ephemeral")
    _, out, _ = await docker.run("ps", "--format", "{{.Names}} {{.State}}")
    assert out == "ephemeral running\n"
    await docker.run("stop", "-t", "5", "ephemeral")

    async def gone() -> bool:
        return cid not in (await docker.run("ps", "-aq", "--no-trunc"))[1]

    await async_wait_until(gone, timeout=20, what="the --rm container removed once it stopped")


async def test_logs_of_a_tty_container_are_raw(docker: Docker) -> None:
    _, out, _ = await docker.run("run", "-d", "-t", "--name", "teletype", "busybox", "sh", "-c",
                                 "echo one; echo two >&2")
    await docker.run("wait", "teletype")
    _, out, err = await docker.run("logs", "teletype")
    assert (out, err) == ("one\r\ntwo\r\n", "")        # one stream, the pty's, with no frame headers
    _, out, _ = await docker.run("logs", "--tail", "1", "-t", "teletype")
    assert out.endswith(" two\r\n") and "\x01" not in out and "\x02" not in out
    await docker.run("rm", "teletype")


async def test_log_driver_none(docker: Docker) -> None:
    _, out, _ = await docker.run("run", "--rm", "--log-driver", "none", "busybox", "echo", "still attached")
    assert out == "still attached\n"                     # attach does not need the log
    await docker.run("run", "-d", "--name", "unlogged", "--log-driver", "none", "busybox", "echo", "hi")
    await docker.run("wait", "unlogged")
    _, out, _ = await docker.run("inspect", "-f", "{{.HostConfig.LogConfig.Type}}", "unlogged")
    assert out == "none\n"
    code, _, err = await docker.run("logs", "unlogged", ok=False)
    assert code == 1 and "configured logging driver does not support reading" in err
    await docker.run("rm", "unlogged")


async def test_a_waiter_answers_the_exit_code_of_a_container_removed_before_it_waited(
        executor: Executor, busybox_layer: Path, tmp_path: Path) -> None:
    """`docker run --rm` (docker-py's `wait(condition="removed")` too) resolves the container, then
    waits; the auto-removal may come in between, taking the exit record with the files. The waiter
    still answers the container's own exit code, for every condition, never -1."""
    async with served(executor, busybox_layer, tmp_path) as (docker, containers):
        await docker.run("run", "-d", "--name", "brief", "busybox", "sleep", "100")
        view, ctl = await containers.get("brief")        # as the wait handler does, before its head
        await containers.remove("brief", force=True)     # SIGKILL: 128 + 9
        for condition in ("", "not-running", "next-exit", "removed"):
            async with asyncio.timeout(10):
                assert await containers.wait(view, ctl, condition) == (137, ""), condition
        assert await ids(docker) == []


async def test_a_waiter_that_comes_while_the_files_go_answers_the_exit_code(
        executor: Executor, busybox_layer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter whose request comes while a removal deletes the container's files (CI caught docker-py's
    `wait(condition="removed")` answering -1, "the shim (conmon) exited without recording an exit
    code", behind an auto-removal) waits for the removal to end and answers the exit code it kept."""
    files_gone, go_on = threading.Event(), threading.Event()
    remove_files = ContainerController._remove_files

    def held_remove_files(ctl: ContainerController) -> None:
        remove_files(ctl)
        files_gone.set()
        go_on.wait(30)

    monkeypatch.setattr(ContainerController, "_remove_files", held_remove_files)
    async with served(executor, busybox_layer, tmp_path) as (docker, containers):
        await docker.run("run", "-d", "--name", "held", "busybox", "sleep", "100")
        view, ctl = await containers.get("held")
        removal = asyncio.ensure_future(containers.remove("held", force=True))     # SIGKILL: 128 + 9
        try:
            assert await asyncio.to_thread(files_gone.wait, 30), "the removal never deleted the files"
            waiters = {condition: asyncio.ensure_future(containers.wait(view, ctl, condition))
                       for condition in ("", "not-running", "next-exit", "removed")}
            await asyncio.wait(waiters.values(), timeout=0.5)    # give a wrong answer its chance
            assert not [c for c, w in waiters.items() if w.done()], "answered while the files went"
        finally:
            go_on.set()
            await removal
        async with asyncio.timeout(10):
            assert {c: await w for c, w in waiters.items()} == dict.fromkeys(waiters, (137, ""))
        assert await ids(docker) == []
