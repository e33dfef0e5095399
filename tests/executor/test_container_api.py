"""The node-local container API over real runc containers, driven by the real docker CLI (28.2.2)
and by raw HTTP: ps with the swarm labels, inspect, logs, top, stats, exec (piped, with stdin,
and with a TTY through a pty), kill/stop/rm, and the 400/404/409 answers. The API is served in
the test's own event loop, so the CLI runs as an asyncio subprocess."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from engineapi.http import Routes, new_app
from engineapi.logframes import parse_frames
from tests.api.support import serve_unix
from tests.executor.conftest import make_config, needs_root_and_runc, wait_for_log
from tests.support.pty_session import PtySession
from tests.support.wait import async_wait_until
from worker.executor import ContainerController, Executor
from worker.executor.node_api import add_node_container_routes

pytestmark = needs_root_and_runc()

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
TASK_LABELS = {"com.docker.swarm.service.id": "svc1", "com.docker.swarm.service.name": "web",
               "com.docker.swarm.task.id": "", "com.docker.swarm.task.name": "",
               "com.docker.swarm.node.id": "node1"}


class Docker:
    def __init__(self, host: str, home: Path) -> None:
        self.env = {**os.environ, "DOCKER_HOST": host, "DOCKER_CONFIG": str(home)}

    async def run(self, *args: str, ok: bool = True, stdin: bytes | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            DOCKER, *args, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(60):
            out, err = await proc.communicate(stdin)
        code = proc.returncode if proc.returncode is not None else -1
        if ok:
            assert code == 0, f"docker {' '.join(args)} failed ({code}): {err.decode()}"
        return code, out.decode(), err.decode()


@pytest.fixture
async def task_container(executor: Executor, busybox_layer: Path) -> AsyncIterator[ContainerController]:
    cid = f"tk{os.getpid()}{id(executor) % 10000}"
    name = f"web.1.{cid}"
    labels = {**TASK_LABELS, "com.docker.swarm.task.id": cid, "com.docker.swarm.task.name": name}
    ctl = executor.controller(make_config(
        busybox_layer, ["sh", "-c", "trap 'exit 0' TERM; echo started; echo oops >&2; sleep 1000 & wait"],
        id=cid, name=name, labels=labels, image="busybox:latest", env=["GREETING=hello"]))
    await ctl.prepare()
    await ctl.start()
    await wait_for_log(ctl.paths.log, "oops")
    try:
        yield ctl
    finally:
        await ctl.remove()


@pytest.fixture
async def api(executor: Executor, tmp_path: Path) -> AsyncIterator[str]:
    app = new_app()
    add_node_container_routes(app, Routes(app), executor, lambda ref: "sha256:" + "ab" * 32)
    async with serve_unix(app, tmp_path / "api.sock") as host:
        yield host


async def test_docker_ps_inspect_logs_top_stats(api: str, task_container: ContainerController,
                                                tmp_path: Path) -> None:
    docker, cid = Docker(api, tmp_path / "cfg"), task_container.id
    _, out, _ = await docker.run("ps", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Image}} {{.Status}}")
    assert out.split()[:3] == [cid, f"web.1.{cid}", "busybox:latest"] and " Up " in f" {out}"
    _, out, _ = await docker.run("ps", "--format", "{{json .Labels}}", "--filter",
                                 "label=com.docker.swarm.service.name=web")
    for label in ("com.docker.swarm.service.id=svc1", "com.docker.swarm.task.id=" + cid,
                  "com.docker.swarm.node.id=node1", "com.docker.swarm.task="):
        assert label in out
    _, out, _ = await docker.run("ps", "-q", "--filter", "label=com.docker.swarm.service.name=other")
    assert out.strip() == ""

    doc = json.loads((await docker.run("inspect", cid[:6]))[1])[0]
    assert doc["Id"] == cid and doc["Name"] == f"/web.1.{cid}" and doc["State"]["Running"] is True
    assert doc["State"]["Pid"] > 0 and doc["Config"]["Image"] == "busybox:latest"
    assert "GREETING=hello" in doc["Config"]["Env"]

    _, out, err = await docker.run("logs", f"web.1.{cid}")
    assert out == "started\n" and err == "oops\n"
    _, out, _ = await docker.run("logs", "--tail", "1", "--timestamps", cid)
    assert out == "" or out.endswith(" started\n")

    _, out, _ = await docker.run("top", cid)
    assert out.splitlines()[0].split()[:2] == ["UID", "PID"] and "sleep 1000" in out

    _, out, _ = await docker.run("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}} {{.PIDs}}", cid)
    name, *_, pids = out.split()
    assert name == f"web.1.{cid}" and int(pids) >= 2 and "iB" in out


async def test_docker_exec_piped_stdin_and_exit_code(api: str, task_container: ContainerController,
                                                     tmp_path: Path) -> None:
    docker, cid = Docker(api, tmp_path / "cfg"), task_container.id
    _, out, _ = await docker.run("exec", cid, "echo", "hi there")
    assert out == "hi there\n"
    _, out, _ = await docker.run("exec", "-e", "EXTRA=1", "-w", "/tmp", cid, "sh", "-c", "echo $GREETING $EXTRA $PWD")
    assert out == "hello 1 /tmp\n"
    _, out, _ = await docker.run("exec", "-i", cid, "sh", "-c", "cat; echo done >&2", stdin=b"piped in\n")
    assert out == "piped in\n"
    code, _, err = await docker.run("exec", cid, "sh", "-c", "echo bad >&2; exit 7", ok=False)
    assert (code, err) == (7, "bad\n")
    _, out, _ = await docker.run("exec", "-u", "nobody", cid, "id", "-u")
    assert out == "1000\n"


async def test_docker_exec_it_sh_through_a_pty(api: str, task_container: ContainerController,
                                               tmp_path: Path) -> None:
    docker = Docker(api, tmp_path / "cfg")
    async with PtySession([DOCKER, "exec", "-it", task_container.id, "sh"], env=docker.env) as session:
        await session.send(b"echo tty-$((6*7)); tty\r")
        screen = await session.expect(b"tty-42")
        await session.expect(b"/dev/pts/")
        await session.send(b"stty size\r")
        await session.expect(b"24 80")
        await session.send(b"exit 3\r")
        code = await session.wait()
    assert code == 3, screen


async def test_docker_exec_start_failures_exit_126_as_dockerd(api: str, task_container: ContainerController,
                                                               tmp_path: Path) -> None:
    """dockerd records ExitCode 126 for an exec it could not start, a missing command included
    (its start-error path overrides the 127 it gives `docker run`); runc's message reaches the
    client."""
    docker, cid = Docker(api, tmp_path / "cfg"), task_container.id
    code, _, err = await docker.run("exec", cid, "nosuch", ok=False)
    assert code == 126 and 'exec: "nosuch": executable file not found in $PATH' in err
    code, _, err = await docker.run("exec", cid, "/etc/passwd", ok=False)
    assert code == 126 and "permission denied" in err
    code, _, _ = await docker.run("exec", cid, "sh", "-c", "exit 255", ok=False)
    assert code == 255                                    # the process's own 255 stays 255
    sock = api.removeprefix("unix://")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
        async with http.post(f"http://d/v1.47/containers/{cid}/exec",
                             json={"Cmd": ["true"], "Tty": True, "DetachKeys": "ctrl-pq"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["message"] == "Invalid escape keys (ctrl-pq) provided"
        async with http.post(f"http://d/v1.47/containers/{cid}/exec",
                             json={"Cmd": ["nosuch"], "AttachStderr": True}) as resp:
            exec_id = (await resp.json())["Id"]
        async with http.post(f"http://d/v1.47/exec/{exec_id}/start", json={}) as resp:
            frames, _ = parse_frames(await resp.read())
        assert any(b"executable file not found" in data for _, data in frames)
        async with http.get(f"http://d/v1.47/exec/{exec_id}/json") as resp:
            doc = await resp.json()
        assert (doc["ExitCode"], doc["Running"]) == (126, False)


async def test_exec_detach_keys_leave_the_process_running(api: str, task_container: ContainerController,
                                                         tmp_path: Path) -> None:
    """A TTY client that sends the detach keys (ctrl-p,ctrl-q unless the exec names others) is let
    go, and the process runs on (`Running` in /exec/{id}/json), as with dockerd. The docker CLI
    spots the keys itself ("read escape sequence") and drops the connection; docker-py's raw
    socket sends them to the daemon."""
    import docker as docker_py

    cli, cid = Docker(api, tmp_path / "cfg"), task_container.id
    async with PtySession([DOCKER, "exec", "-it", "--detach-keys", "ctrl-a,d", cid, "sh"], env=cli.env) as session:
        await session.send(b"echo \x10x-$((6*7))\r")
        await session.expect(b"x-42")                    # ctrl-p alone is no longer special
        await session.send(b"\x01d")
        await session.expect(b"read escape sequence")
        await session.wait()

    def drive(keys: str | None, sequence: bytes, pidfile: str) -> None:
        client = docker_py.APIClient(base_url=api, version="1.47")
        try:
            extra = {"detach_keys": keys} if keys else {}
            exec_id = client.exec_create(cid, "sh", stdin=True, tty=True, **extra)["Id"]
            sock = client.exec_start(exec_id, tty=True, socket=True)._sock
            sock.settimeout(20)
            sock.sendall(f"echo $$ > {pidfile}; echo \x10x-$((6*7))\n".encode())
            seen = b""
            while b"x-42" not in seen:
                seen += sock.recv(4096)
            sock.sendall(sequence + b"echo never\n")
            while chunk := sock.recv(4096):               # the daemon ends the connection
                seen += chunk
            sock.close()
            assert b"never" not in seen
            state = client.exec_inspect(exec_id)
            assert (state["Running"], state["ExitCode"]) == (True, None), state
            out = client.exec_start(client.exec_create(cid, ["sh", "-c", f"kill -9 $(cat {pidfile})"])["Id"])
            assert out == b""
        finally:
            client.close()

    await asyncio.to_thread(drive, None, b"\x10\x11", "/tmp/d1")
    await asyncio.to_thread(drive, "ctrl-a,d", b"\x01d", "/tmp/d2")


async def test_wait_gives_the_exit_code_runc_saw_before_the_shim_recorded_it(api: str, executor: Executor,
                                                                             busybox_layer: Path) -> None:
    """The process has ended (runc says stopped) but its shim has not written the exit code yet
    (here: the shim is stopped): `POST /wait` waits for the code instead of answering 0."""
    argv = ["sh", "-c", "trap 'exit 3' TERM; echo up; sleep 1000 & wait"]
    ctl = executor.controller(make_config(busybox_layer, argv))
    await ctl.prepare()
    await ctl.start()
    await wait_for_log(ctl.paths.log, "up")
    conmon = int(ctl.paths.conmon_pidfile.read_text())
    os.kill(conmon, signal.SIGSTOP)
    try:
        os.kill((await ctl.state()).pid, signal.SIGTERM)
        await async_wait_until(lambda: _stopped(ctl), timeout=10, what="runc to see the container stop")
        assert not ctl.exited()
        sock = api.removeprefix("unix://")
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
            async with http.post(f"http://d/v1.47/containers/{ctl.id}/wait") as resp:
                assert resp.status == 200
                os.kill(conmon, signal.SIGCONT)
                assert json.loads(await resp.read()) == {"StatusCode": 3, "Error": None}
    finally:
        os.kill(conmon, signal.SIGCONT)
        await ctl.remove()


async def _stopped(ctl: ContainerController) -> bool:
    st = await ctl.runc_state()
    return st is not None and st.get("status") == "stopped"


async def test_kill_stop_rm_and_errors(api: str, executor: Executor, busybox_layer: Path,
                                       task_container: ContainerController, tmp_path: Path) -> None:
    docker, cid = Docker(api, tmp_path / "cfg"), task_container.id
    code, _, err = await docker.run("inspect", "--type", "container", "nosuch", ok=False)
    assert code == 1 and "No such container: nosuch" in err
    code, _, err = await docker.run("rm", cid, ok=False)
    assert code == 1 and "container is running: stop the container before removing or force remove" in err
    code, _, err = await docker.run("kill", "-s", "NOPE", cid, ok=False)
    assert code == 1 and "Invalid signal: NOPE" in err

    sock, bogus = api.removeprefix("unix://"), "%7B%22bogus%22%3A%5B%22x%22%5D%7D"
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
        for method, path, status, text in (
                ("GET", f"/v1.47/containers/json?filters={bogus}", 400, "invalid filter 'bogus'"),
                ("POST", f"/v1.47/containers/{cid}/exec", 400, "No exec command specified"),
                ("GET", "/v1.47/exec/deadbeef/json", 404, "No such exec instance: deadbeef"),
                ("GET", f"/v1.47/containers/{cid}/logs", 400, "you must choose at least one stream"),
                ("GET", "/v1.47/containers/nosuch/top", 404, "No such container: nosuch")):
            async with http.request(method, "http://d" + path, json={} if method == "POST" else None) as resp:
                assert resp.status == status and resp.content_type == "application/json", path
                assert text in (await resp.json())["message"]
        async with http.get(f"http://d/v1.47/containers/{cid}/stats?stream=true") as resp:
            first = json.loads(await resp.content.readline())
            second = json.loads(await resp.content.readline())
        assert first["id"] == cid and second["precpu_stats"] == first["cpu_stats"]
        async with http.post(f"http://d/v1.47/containers/{cid}/exec",
                             json={"Cmd": ["sh", "-c", "echo a; echo b >&2"], "AttachStdout": True,
                                   "AttachStderr": True}) as resp:
            exec_id = (await resp.json())["Id"]
        async with http.post(f"http://d/v1.47/exec/{exec_id}/start", json={}) as resp:   # no upgrade asked
            assert (resp.status, resp.content_type) == (200, "application/vnd.docker.multiplexed-stream")
            frames, _ = parse_frames(await resp.read())
        assert sorted(frames) == [(1, b"a\n"), (2, b"b\n")]
        async with http.post(f"http://d/v1.47/exec/{exec_id}/start", json={}) as resp:
            assert resp.status == 409 and "has already run" in (await resp.json())["message"]
        async with http.get(f"http://d/v1.47/containers/{cid}/logs?stdout=1&stderr=1") as resp:
            frames, rest = parse_frames(await resp.read())
        assert frames == [(1, b"started\n"), (2, b"oops\n")] and rest == b""

    await docker.run("stop", "-t", "5", cid)
    _, out, _ = await docker.run("ps", "-a", "--format", "{{.Status}}", "--filter", f"id={cid}")
    assert out.startswith("Exited (0)")
    code, _, err = await docker.run("exec", cid, "true", ok=False)
    assert code == 1 and "is not running" in err
    _, out, _ = await docker.run("wait", cid)
    assert out.strip() == "0"
    await docker.run("rm", cid)
    assert (await task_container.state()).status == "absent"
    _, out, _ = await docker.run("ps", "-aq")
    assert cid not in out

    other = executor.controller(make_config(busybox_layer, ["sleep", "1000"], labels=TASK_LABELS))
    await other.prepare()
    await other.start()
    try:
        await docker.run("kill", other.id)          # answered once dead, as dockerd: inspect right after
        _, out, _ = await docker.run("inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", other.id)
        assert out.split() == ["false", "137"]
        await docker.run("rm", "-f", other.id)
        assert (await other.state()).status == "absent"
    finally:
        await other.remove()



async def test_docker_py_containers_and_exec(api: str, task_container: ContainerController) -> None:
    import docker

    cid = task_container.id

    def drive() -> None:
        client = docker.DockerClient(base_url=api, version="1.47")
        try:
            listed = client.containers.list(filters={"label": "com.docker.swarm.service.name=web"})
            assert [c.id for c in listed] == [cid]
            container = client.containers.get(f"web.1.{cid}")
            assert container.name == f"web.1.{cid}" and container.status == "running"
            assert container.labels["com.docker.swarm.task.id"] == cid
            result = container.exec_run(["sh", "-c", "echo out; echo err >&2; exit 4"], demux=True)
            assert result.exit_code == 4 and result.output == (b"out\n", b"err\n")
            result = container.exec_run("tty", tty=True)
            assert result.exit_code == 0 and result.output.startswith(b"/dev/pts/")
            # the start request's Tty picks the framing, as dockerd: a TTY's output framed as stdout
            framed = client.api.exec_start(client.api.exec_create(cid, ["printf", "a b"], tty=True)["Id"], tty=False)
            assert framed == b"a b"
            exec_id = client.api.exec_create(cid, "sleep 30")["Id"]
            client.api.exec_start(exec_id, detach=True)
            running = client.api.exec_inspect(exec_id)
            assert running["Running"] is True and running["ProcessConfig"]["entrypoint"] == "sleep"
            assert client.api.inspect_container(cid)["ExecIDs"] == [exec_id]     # the running ones only
            client.api.exec_resize(exec_id, height=10, width=20)      # no TTY: accepted, nothing to do
            assert container.logs(stdout=True, stderr=False) == b"started\n"
            assert container.logs(tail=1) == b"oops\n"
            assert any("sleep 1000" in p[-1] for p in container.top()["Processes"])
            stats = container.stats(stream=False)
            assert stats["memory_stats"]["usage"] > 0 and stats["precpu_stats"]["cpu_usage"]["total_usage"] > 0
            with pytest.raises(docker.errors.NotFound, match="No such container: nosuch"):
                client.containers.get("nosuch")
            with pytest.raises(docker.errors.NotFound, match="No such exec instance"):
                client.api.exec_inspect("nosuch")
            container.kill(signal="SIGTERM")
            assert container.wait(timeout=20)["StatusCode"] == 0
            assert client.api.exec_inspect(exec_id)["Running"] is False    # ended with its container
        finally:
            client.close()

    await asyncio.to_thread(drive)


async def test_running_execs_end_with_their_container_before_wait_returns(api: str, executor: Executor,
                                                                          busybox_layer: Path) -> None:
    """As dockerd: the container's exit ends its running execs, so an inspect right after `wait`
    returns sees them stopped (their own runc exec reports a moment later: the code is filled in
    then, and Running stays false). Rounds with piped and TTY execs, as the order in which the
    container's shim and the execs' runc notice the deaths varies."""
    sock = api.removeprefix("unix://")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
        async def call(method: str, path: str, body: object = None) -> object:
            async with http.request(method, f"http://d/v1.47{path}", json=body) as resp:
                assert resp.status < 300, f"{method} {path}: {resp.status} {await resp.text()}"
                return await resp.json() if resp.content_type == "application/json" else None

        async def inspect(exec_id: str) -> dict[str, object]:
            found = await call("GET", f"/exec/{exec_id}/json")
            assert isinstance(found, dict)
            return found

        for _ in range(ROUNDS):
            ctl = executor.controller(make_config(busybox_layer, ["sleep", "1000"]))
            await ctl.prepare()
            await ctl.start()
            try:
                execs = []
                for tty in (False, False, True):
                    made = await call("POST", f"/containers/{ctl.id}/exec", {"Cmd": ["sleep", "30"], "Tty": tty})
                    assert isinstance(made, dict)
                    await call("POST", f"/exec/{made['Id']}/start", {"Detach": True, "Tty": tty})
                    execs.append(str(made["Id"]))
                for exec_id in execs:      # the processes run (a kill before would fail their start)
                    await async_wait_until(functools.partial(_exec_pid, inspect, exec_id), what="its pid")
                await call("POST", f"/containers/{ctl.id}/kill?signal=KILL")
                assert await call("POST", f"/containers/{ctl.id}/wait") == {"StatusCode": 137, "Error": None}
                for exec_id in execs:
                    found = await inspect(exec_id)
                    assert (found["Running"], found["Pid"]) == (False, 0), found
                container = await call("GET", f"/containers/{ctl.id}/json")
                assert isinstance(container, dict) and container["ExecIDs"] is None
                for exec_id in execs:      # each session ends and records its process's code
                    ended = await async_wait_until(functools.partial(_exec_code, inspect, exec_id), what="its code")
                    assert ended == (False, 137)
            finally:
                await ctl.remove()


ROUNDS = 8


async def _exec_pid(inspect: Callable[[str], Awaitable[dict[str, object]]], exec_id: str) -> object:
    return (await inspect(exec_id))["Pid"]


async def _exec_code(inspect: Callable[[str], Awaitable[dict[str, object]]],
                     exec_id: str) -> tuple[object, object] | None:
    found = await inspect(exec_id)
    return (found["Running"], found["ExitCode"]) if found["ExitCode"] is not None else None
