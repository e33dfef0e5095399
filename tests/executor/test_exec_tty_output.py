"""`docker exec -t` output crosses one terminal: the container's pty, whose master runc hands
the daemon over its console socket (as dockerd's shim takes it), so ONLCR turns each "\\n" into
"\\r\\n" once. Through a second pty of the daemon's, output written before runc cleared ONLCR on
the container's pty came out as "\\r\\r\\n" in about half the runs (issue 13): 20 runs catch it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from tests.executor.conftest import needs_root_and_runc
from tests.executor.test_container_api import Docker, api, task_container  # noqa: F401
from tests.support.wait import async_wait_until
from worker.executor import ContainerController, Executor
from worker.executor.exec_sessions import ExecConfig, ExecInstance, ExecRegistry

pytestmark = needs_root_and_runc()


async def test_docker_exec_t_translates_newlines_once(api: str,  # noqa: F811
                                                      task_container: ContainerController,  # noqa: F811
                                                      tmp_path: Path) -> None:
    docker, cid = Docker(api, tmp_path / "cfg"), task_container.id
    for run in range(20):
        _, out, _ = await docker.run("exec", "-t", cid, "sh", "-c", "echo one; echo two; echo three")
        assert out == "one\r\ntwo\r\nthree\r\n", f"run {run}: {out!r}"
    code, out, _ = await docker.run("exec", "-t", cid, "sh", "-c", "echo bye; exit 5", ok=False)
    assert (code, out) == (5, "bye\r\n")


async def test_exec_tty_start_failure_resize_and_pid(api: str,  # noqa: F811
                                                     task_container: ContainerController,  # noqa: F811
                                                     tmp_path: Path) -> None:
    """With a TTY too, a command that cannot start is ExitCode 126 with runc's message; a resize
    reaches the container's pty (through its master); Pid is the process's while it runs."""
    docker, cid = Docker(api, tmp_path / "cfg"), task_container.id
    code, out, _ = await docker.run("exec", "-t", cid, "nosuch", ok=False)
    assert code == 126 and 'exec: "nosuch": executable file not found in $PATH' in out
    sock = api.removeprefix("unix://")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
        async with http.post(f"http://d/v1.47/containers/{cid}/exec",
                             json={"Cmd": ["sh", "-c", "read line; stty size; echo $$"], "Tty": True,
                                   "AttachStdin": True, "AttachStdout": True}) as resp:
            exec_id = (await resp.json())["Id"]
        reader, writer = await asyncio.open_unix_connection(sock)
        body = b'{"Tty": true}'
        writer.write(b"POST /v1.47/exec/" + exec_id.encode() + b"/start HTTP/1.1\r\nHost: d\r\n"
                     b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(20):
            await reader.readuntil(b"\r\n\r\n")
            while True:
                async with http.get(f"http://d/v1.47/exec/{exec_id}/json") as resp:
                    doc = await resp.json()
                if doc["Pid"]:
                    break
            async with http.post(f"http://d/v1.47/exec/{exec_id}/resize?h=33&w=111") as resp:
                assert resp.status == 200
            writer.write(b"go\n")
            await writer.drain()
            seen = b""
            while chunk := await reader.read(4096):
                seen += chunk
        writer.close()
        assert b"33 111\r\n" in seen, seen
        async with http.get(f"http://d/v1.47/exec/{exec_id}/json") as resp:
            doc = await resp.json()
        assert (doc["ExitCode"], doc["Running"]) == (0, False)


async def test_closing_the_registry_kills_a_running_tty_exec(executor: Executor,
                                                            task_container: ContainerController) -> None:  # noqa: F811
    """A TTY exec nobody waits for ends with the registry: its process and the helper are killed."""
    registry = ExecRegistry()
    instance = ExecInstance(task_container, ExecConfig(cmd=["sleep", "1000"], tty=True))
    registry.add(instance)
    instance.claim()
    codes: list[int] = []
    registry.start_detached(instance, codes.append)

    async def started() -> int:
        return instance.pid

    pid = await async_wait_until(started, timeout=20, what="the exec's pid")
    await registry.close()
    assert instance.exit_code == 137 and not instance.running and codes == [137]

    async def gone() -> bool:
        try:
            os.kill(pid, 0)                 # a zombie not yet reaped still answers
        except ProcessLookupError:
            return True
        return False

    await async_wait_until(gone, timeout=10, what="the exec's process to be reaped")
