"""Real containers: logs with follow, volumes, mount propagation, live restore, cleanup."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from engineapi.logframes import parse_frames
from tests.executor.conftest import make_config, needs_root_and_runc, read_if_exists, wait_for_log
from worker.executor import Executor, ExecutorError, MountSpec
from worker.executor.logs import format_entry
from worker.executor.rootfs import mount, mounts_under, unmount
from worker.executor.runtime import pid_alive
from worker.executor.volumes import VolumeError

pytestmark = needs_root_and_runc()
REPO = Path(__file__).resolve().parents[2]


async def test_log_follow_streams_until_exit(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(busybox_layer, [
        "sh", "-c", "echo ready; while [ ! -e /tmp/go ]; do sleep 0.05; done; "
                    "for i in 1 2 3; do echo line$i; sleep 0.1; done; echo oops >&2; "
                    "printf partial-no-newline"])
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        await ctl.start()
        await wait_for_log(ctl.paths.log, "ready")
        seen: list[tuple[str, bytes]] = []
        frames = b""

        async def follow() -> None:
            nonlocal frames
            async for entry in executor.logs(config.id, follow=True):
                seen.append((entry.stream, entry.message))
                frames += format_entry(entry, timestamps=True, details={"com.docker.swarm.task.id": "t1"})

        async with asyncio.timeout(15):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(follow())
                await wait_for_log(ctl.paths.log, "ready")
                (ctl.paths.rootfs / "tmp/go").touch()   # the overlay is visible from the host
        assert seen == [("stdout", b"ready"), ("stdout", b"line1"), ("stdout", b"line2"),
                        ("stdout", b"line3"), ("stderr", b"oops"),
                        ("stdout", b"partial-no-newline")]
        parsed, rest = parse_frames(frames)
        assert rest == b""
        assert [sid for sid, _ in parsed] == [1, 1, 1, 1, 2, 1]
        ts, details, message = parsed[4][1].split(b" ", 2)
        assert ts.startswith(b"20") and details == b"com.docker.swarm.task.id=t1"
        assert message == b"oops\n"
        tail = [e.message async for e in executor.logs(config.id, tail=2)]
        assert tail == [b"oops", b"partial-no-newline"]
    finally:
        await ctl.remove()


async def test_named_volume_outlives_its_container(executor: Executor, busybox_layer: Path) -> None:
    mounts = [MountSpec(type="volume", source="keep", target="/data")]
    writer = executor.controller(make_config(
        busybox_layer, ["sh", "-c", "echo precious > /data/file"], mounts=mounts))
    try:
        await writer.prepare()
        assert executor.volumes.exists("keep")               # created on first mount
        with pytest.raises(VolumeError, match="in use"):
            executor.volumes.remove("keep")
        await writer.start()
        assert (await writer.wait()).exit_code == 0
    finally:
        await writer.remove()
    assert executor.volumes.users("keep") == []
    reader = executor.controller(make_config(busybox_layer, ["cat", "/data/file"], mounts=mounts))
    try:
        await reader.prepare()
        await reader.start()
        assert (await reader.wait()).exit_code == 0
        assert reader.paths.log.read_text().endswith("stdout F precious\n")
    finally:
        await reader.remove()
    executor.volumes.remove("keep")
    assert not executor.volumes.exists("keep")


async def test_anonymous_volume_goes_with_its_container(executor: Executor, busybox_layer: Path) -> None:
    ctl = executor.controller(make_config(busybox_layer, ["touch", "/scratch/x"],
                                          mounts=[MountSpec(type="volume", target="/scratch")]))
    try:
        await ctl.prepare()
        assert len(executor.volumes.list()) == 1
        await ctl.start()
        assert (await ctl.wait()).exit_code == 0
    finally:
        await ctl.remove()
    assert executor.volumes.list() == []


async def test_tmpfs_and_read_only_mounts(executor: Executor, busybox_layer: Path, tmp_path: Path) -> None:
    src = tmp_path / "ro-src"
    src.mkdir()
    (src / "f").write_text("x")
    ctl = executor.controller(make_config(
        busybox_layer,
        ["sh", "-c", "grep ' /scratch ' /proc/mounts | cut -d' ' -f3; "
                     "touch /ro/new 2>/dev/null && echo writable || echo readonly; cat /ro/f"],
        mounts=[MountSpec(type="tmpfs", target="/scratch", tmpfs_size=1 << 20),
                MountSpec(type="bind", source=str(src), target="/ro", read_only=True)]))
    try:
        await ctl.prepare()
        await ctl.start()
        assert (await ctl.wait()).exit_code == 0
        out = [line.split(" ", 3)[3] for line in ctl.paths.log.read_text().splitlines()]
        assert out == ["tmpfs", "readonly", "x"]
    finally:
        await ctl.remove()


async def test_bind_propagation(executor: Executor, busybox_layer: Path, tmp_path: Path) -> None:
    """A mount made on the host under the source after start shows in the container only with
    rshared or rslave propagation."""
    src, control = tmp_path / "prop-src", tmp_path / "control"
    (src / "sub").mkdir(parents=True)
    control.mkdir()
    mount(str(src), src, "", 4096 | 16384)            # MS_BIND | MS_REC: src becomes a mount
    mount("none", src, "", 1 << 20)                   # MS_SHARED
    ctls = {}
    try:
        for prop in ("rshared", "rslave", "rprivate"):
            ctl = executor.controller(make_config(busybox_layer, [
                "sh", "-c", "echo ready; while [ ! -e /ctl/go ]; do sleep 0.05; done; "
                            "test -e /mnt/sub/marker && echo seen || echo absent"],
                mounts=[MountSpec(type="bind", source=str(src), target="/mnt", propagation=prop),
                        MountSpec(type="bind", source=str(control), target="/ctl")]))
            ctls[prop] = ctl
            await ctl.prepare()
            await ctl.start()
        for ctl in ctls.values():
            await wait_for_log(ctl.paths.log, "ready")
        mount("tmpfs", src / "sub", "tmpfs")
        (src / "sub/marker").touch()
        (control / "go").touch()
        results = {}
        for prop, ctl in ctls.items():
            async with asyncio.timeout(10):
                assert (await ctl.wait()).exit_code == 0
            results[prop] = ctl.paths.log.read_text().splitlines()[-1].split(" ", 3)[3]
        assert results == {"rshared": "seen", "rslave": "seen", "rprivate": "absent"}
    finally:
        for ctl in ctls.values():
            await ctl.remove()
        unmount(src / "sub")
        unmount(src)


async def test_remove_leaves_nothing_behind(executor: Executor, busybox_layer: Path) -> None:
    ctl = executor.controller(make_config(busybox_layer, ["sleep", "300"]))
    await ctl.prepare()
    await ctl.start()
    state = await ctl.state()
    assert state.status == "running"
    conmon_pid = int(ctl.paths.conmon_pidfile.read_text())
    shim_cgroup = f"{executor.layout.cgroup_parent}/shims"
    assert f":memory:{shim_cgroup}\n" in read_if_exists(Path(f"/proc/{conmon_pid}/cgroup"))
    cgroups = executor.layout.cgroup_dirs(ctl.id)
    assert any(d.is_dir() for d in cgroups)
    await ctl.remove()
    assert not pid_alive(state.pid) and not pid_alive(conmon_pid)
    assert await executor.runc.state(ctl.id) is None
    assert mounts_under(executor.layout.states_dir) == []
    assert not any(d.exists() for d in cgroups)
    assert not ctl.paths.exists()
    assert not executor.layout.exit_file(ctl.id).exists()
    await ctl.remove()          # idempotent
    await ctl.shutdown()
    await ctl.terminate()


async def test_restart_reaps_half_made_containers(data_dir: Path, busybox_layer: Path) -> None:
    executor = Executor(data_dir)
    await executor.start_up()
    executor.close()
    ctl = executor.controller(make_config(busybox_layer, ["true"]))
    # a crash in the middle of prepare: files and the overlay mount, but no runc container
    ctl.paths.state.mkdir(parents=True)
    ctl.paths.dir.mkdir(parents=True)
    ctl.paths.config.write_text(json.dumps(ctl.config.to_json()))
    await asyncio.to_thread(ctl._prepare_files)
    stale_cgroup = executor.layout.cgroup_dirs("ghost")[0]
    stale_cgroup.mkdir(parents=True)
    assert mounts_under(executor.layout.states_dir)
    restarted = Executor(data_dir)
    try:
        report = await restarted.start_up()
        assert ctl.id in report.dirs_removed
        assert mounts_under(executor.layout.states_dir) == []
        assert not ctl.paths.exists()
        assert not stale_cgroup.exists()
        assert await restarted.list_existing() == []
    finally:
        restarted.close()


async def test_live_restore_after_owner_is_killed(data_dir: Path, busybox_layer: Path,
                                                 tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.executor.owner_proc", str(data_dir), str(busybox_layer),
        str(control), cwd=REPO, stdout=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        assert owner.stdout is not None
        line = await asyncio.wait_for(owner.stdout.readline(), 30)
        pids = json.loads(line)["pids"]
    finally:
        owner.send_signal(signal.SIGKILL)
        await owner.wait()
    assert all(pid_alive(pid) for pid in pids.values()), "containers died with their owner"
    (control / "go").touch()           # the exiter ends while no daemon is running

    executor = Executor(data_dir)
    report = await executor.start_up()
    assert report.dirs_removed == [] and report.runc_deleted == []
    adopted = {c.id: c for c in await executor.list_existing()}
    assert set(adopted) == {"restore-runner", "restore-exiter"}
    try:
        runner_state = await adopted["restore-runner"].state()
        assert runner_state.status == "running"
        assert runner_state.pid == pids["restore-runner"]       # the same process, not restarted
        async with asyncio.timeout(10):
            status = await adopted["restore-exiter"].wait()
        assert status.exit_code == 7
        assert (await adopted["restore-exiter"].state()).status == "stopped"
        runner = adopted["restore-runner"]
        await runner.shutdown(grace=0.5)
        assert (await runner.wait()).exit_code == 137      # sleep as pid 1 ignores SIGTERM
    finally:
        for ctl in adopted.values():
            await ctl.remove()
        executor.close()
    assert mounts_under(executor.layout.states_dir) == []
    assert os.listdir(executor.layout.containers_dir) == os.listdir(executor.layout.states_dir) == []


async def test_start_before_prepare_is_an_error(executor: Executor, busybox_layer: Path) -> None:
    ctl = executor.controller(make_config(busybox_layer, ["true"]))
    with pytest.raises(ExecutorError, match="not prepared"):
        await ctl.start()


async def test_containers_are_created_at_most_n_at_once(data_dir: Path, busybox_layer: Path) -> None:
    executor = Executor(data_dir, max_parallel_creates=2)
    await executor.start_up()
    creating, most = 0, 0
    real_create = executor.conmon.create

    async def counted_create(*args: object, **kw: object) -> int:
        nonlocal creating, most
        creating += 1
        most = max(most, creating)
        try:
            return await real_create(*args, **kw)  # type: ignore[arg-type]
        finally:
            creating -= 1

    executor.conmon.create = counted_create  # type: ignore[method-assign]
    ctls = [executor.controller(make_config(busybox_layer, ["sleep", "300"])) for _ in range(5)]
    try:
        await asyncio.gather(*(ctl.prepare() for ctl in ctls))
        assert [(await ctl.state()).status for ctl in ctls] == ["created"] * 5
        assert most == 2
    finally:
        await asyncio.gather(*(ctl.remove() for ctl in ctls))
        executor.close()
