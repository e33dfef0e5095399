"""The fast start path: shims born in the shims cgroup (the spawner helper), and the exec-fifo
start that replaces a `runc start` process; with their failure and fallback paths."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.executor.conftest import make_config, needs_root_and_runc, read_if_exists, wait_for_log
from tests.support.wait import wait_until
from worker.executor import Executor, ExecutorError
from worker.executor.layout import SHIM_CGROUP, Layout
from worker.executor.rootfs import mounts_under
from worker.executor.runtime import RuntimeFailure, _read_fifo_until_exec, _read_line, pid_alive
from worker.executor.shim_spawner import ShimSpawner, SpawnerUnavailable

pytestmark = needs_root_and_runc()


def shim_cgroup_members(layout: Layout) -> dict[str, set[int]]:
    """Per hierarchy (but cpuset, where shims are not placed): the pids in the shims cgroup."""
    out = {}
    for parent in layout.cgroup_dirs():
        hierarchy = parent.relative_to("/sys/fs/cgroup").parts[0]
        if "cpuset" in hierarchy.split(","):
            continue
        out[hierarchy] = {int(p) for p in read_if_exists(parent / SHIM_CGROUP / "cgroup.procs").split()}
    return out


async def wait_gone(pid: int, timeout: float = 5.0) -> None:
    """Wait, up to `timeout`, until the process is gone."""
    await asyncio.to_thread(wait_gone_blocking, pid, timeout)


def wait_gone_blocking(pid: int, timeout: float) -> None:
    """Wait, up to `timeout`, for the process to exit (its pidfd turns readable when it does)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    assert not pid_alive(pid), f"process {pid} is still alive"


def wait_for_exec(pid: int, timeout: float = 5.0) -> bytes:
    """argv[0] of the process once it is no longer runc's init (/proc has no event: polled)."""
    def execed() -> bytes | None:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        return argv0.rsplit(b"/", 1)[-1] if argv0 and not argv0.endswith(b"runc") else None
    return wait_until(execed, timeout=timeout, interval=0.005, what=f"process {pid} to exec its program")


def wait_for_text(path: Path, text: str, timeout: float = 5.0) -> str:
    wait_until(lambda: path.read_text() == text, timeout=timeout, interval=0.01, what=f"{path} to read {text!r}")
    return path.read_text()


async def test_shim_is_born_in_the_shims_cgroup_of_every_hierarchy(executor: Executor,
                                                                   busybox_layer: Path) -> None:
    ctl = executor.controller(make_config(busybox_layer, ["sleep", "300"]))
    try:
        await ctl.prepare()
        await ctl.start()
        assert (await ctl.state()).status == "running"
        conmon_pid = int(ctl.paths.conmon_pidfile.read_text())
        members = shim_cgroup_members(executor.layout)
        assert members, "no cgroup hierarchy found"
        for hierarchy, pids in members.items():
            assert conmon_pid in pids, f"conmon is not in the shims cgroup of {hierarchy}"
            assert executor.conmon.spawner is not None and executor.conmon.spawner.pid in pids
            assert os.getpid() not in pids            # the daemon itself stays where it was
    finally:
        await ctl.remove()


async def test_a_killed_spawner_is_restarted_and_running_containers_stay(
        executor: Executor, busybox_layer: Path) -> None:
    spawner = executor.conmon.spawner
    assert spawner is not None
    first = executor.controller(make_config(busybox_layer, ["sleep", "300"]))
    second = executor.controller(make_config(busybox_layer, ["sleep", "300"]))
    try:
        await first.prepare()
        await first.start()
        old_pid = spawner.pid
        os.kill(old_pid, signal.SIGKILL)
        await wait_gone(old_pid)
        await second.prepare()
        await second.start()
        assert (await second.state()).status == "running"
        assert spawner.pid not in (0, old_pid)
        assert (await first.state()).status == "running"
        assert int(second.paths.conmon_pidfile.read_text()) in shim_cgroup_members(executor.layout)["memory"]
    finally:
        await first.remove()
        await second.remove()


async def test_a_shim_that_cannot_start_gives_a_clear_error(data_dir: Path, busybox_layer: Path) -> None:
    executor = Executor(data_dir, conmon_binary=str(data_dir / "no-such-conmon"))
    try:
        await executor.start_up()
        ctl = executor.controller(make_config(busybox_layer, ["true"]))
        with pytest.raises(ExecutorError, match="cannot start the shim"):
            await ctl.prepare()
        assert mounts_under(executor.layout.states_dir) == []
        assert not ctl.paths.exists()
    finally:
        executor.close()


async def test_runc_process_fallbacks_still_work(executor: Executor, busybox_layer: Path) -> None:
    """start, kill and delete through runc's own commands (the shortcuts turned off)."""
    executor.runc.shortcuts = False
    trapped = ["sh", "-c", "trap 'exit 3' TERM; echo ready; sleep 300 & wait"]
    ctl = executor.controller(make_config(busybox_layer, trapped))
    try:
        await ctl.prepare()
        assert (await ctl.state()).status == "created"
        await ctl.start()
        assert (await ctl.state()).status == "running"
        await wait_for_log(ctl.paths.log, "ready")   # a TERM before the trap is set is lost on PID 1
        await ctl.shutdown(grace=10)
        assert (await ctl.wait()).exit_code == 3
    finally:
        await ctl.remove()
    assert not (executor.runc.root / ctl.id).exists()


async def test_fifo_start_lets_the_process_exec_and_reports_a_dead_init(executor: Executor,
                                                                       busybox_layer: Path) -> None:
    ctl = executor.controller(make_config(busybox_layer, ["sh", "-c", "echo started; exec sleep 300"]))
    dead = executor.controller(make_config(busybox_layer, ["sleep", "300"]))
    try:
        await ctl.prepare()
        await ctl.start()
        state = await ctl.state()
        assert state.status == "running"
        assert not (executor.runc.root / ctl.id / "exec.fifo").exists()
        # start returns at the exec's point of no return (as `runc start` does): the process
        # then becomes the user's program
        assert await asyncio.to_thread(wait_for_exec, state.pid) != b"runc"
        await dead.prepare()
        init_pid = (await dead.state()).pid
        os.kill(init_pid, signal.SIGKILL)
        await wait_gone(init_pid)
        with pytest.raises(RuntimeFailure):
            await executor.runc.start(dead.id)
    finally:
        await ctl.remove()
        await dead.remove()


# ---- the pieces on their own ----------------------------------------------------------------

async def test_fifo_reader_returns_what_the_writer_wrote_or_nothing_when_it_died(tmp_path: Path) -> None:
    fifo = tmp_path / "exec.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"printf 0 > {fifo}; sleep 0.05"])  # noqa: ASYNC220
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        async with asyncio.timeout(10):
            assert await _read_fifo_until_exec(fd, writer.pid) == b"0"
    finally:
        os.close(fd)
        writer.wait()

    never = subprocess.Popen(["sleep", "30"])  # noqa: ASYNC220 - never opens the fifo
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        reader = asyncio.ensure_future(_read_fifo_until_exec(fd, never.pid))
        for _ in range(20):       # loop turns, each polling the selector: a wrong wake-up would land
            await asyncio.sleep(0)
        assert not select.select([fd], [], [], 0)[0] and not reader.done()
        never.kill()
        async with asyncio.timeout(10):
            assert await reader == b""
    finally:
        os.close(fd)
        never.wait()


async def test_spawner_runs_programs_with_the_sync_pipe_env_and_cwd(tmp_path: Path) -> None:
    placed: list[int] = []
    spawner = ShimSpawner(placed.append, tmp_path / "spawner.log")
    await asyncio.to_thread(spawner.ensure_started)
    try:
        assert placed == [spawner.pid]
        read_fd, write_fd = os.pipe()
        out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            spawner.spawn(["/bin/sh", "-c", 'echo "{\\"pwd\\": \\"$(pwd)\\", \\"v\\": \\"$V\\", '
                                            '\\"sync\\": \\"$_OCI_SYNCPIPE\\"}" >&3; echo out; echo err >&2'],
                          {"V": "value", "PATH": os.environ["PATH"]}, str(tmp_path), write_fd, out)
        finally:
            os.close(write_fd)
            os.close(out)
        try:
            async with asyncio.timeout(10):
                line = await _read_line(read_fd)
        finally:
            os.close(read_fd)
        assert json.loads(line) == {"pwd": str(tmp_path), "v": "value", "sync": "3"}
        assert await asyncio.to_thread(wait_for_text, tmp_path / "out", "out\nerr\n") == "out\nerr\n"

        read_fd, write_fd = os.pipe()
        try:
            spawner.spawn([str(tmp_path / "missing")], {}, str(tmp_path), write_fd, write_fd)
        finally:
            os.close(write_fd)
        try:
            async with asyncio.timeout(10):
                report = json.loads(await _read_line(read_fd))
        finally:
            os.close(read_fd)
        assert report["data"] == -1 and "cannot start the shim" in report["message"]
    finally:
        pid = spawner.pid
        spawner.close()
    assert not pid_alive(pid)
    with pytest.raises(SpawnerUnavailable):
        spawner.spawn(["/bin/true"], {}, "/", 0, 1)


def test_spawner_exits_when_its_owner_dies(tmp_path: Path) -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from worker.executor.shim_spawner import ShimSpawner;"
            "s = ShimSpawner(lambda pid: None, __import__('pathlib').Path(sys.argv[2]));"
            "s.ensure_started(); print(s.pid, flush=True); __import__('signal').pause()")
    owner = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).resolve().parents[2]),
                              str(tmp_path / "log")], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        spawner_pid = int(owner.stdout.readline())
        assert pid_alive(spawner_pid)
    finally:
        owner.kill()
        owner.wait()
    wait_gone_blocking(spawner_pid, 10)
