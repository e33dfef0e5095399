"""Real containers under runc + conmon: process settings, limits, stop semantics, health."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.executor.conftest import make_config, needs_root_and_runc, wait_for_log
from tests.support.wait import async_wait_until
from worker.executor import ContainerConfig, ContainerUnhealthy, Executor, ExecutorError, Healthcheck, Resources
from worker.executor.rootfs import mounts_under

pytestmark = needs_root_and_runc()


async def run_to_exit(executor: Executor, config: ContainerConfig) -> tuple[int, bool, str]:
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        await ctl.start()
        async with asyncio.timeout(20):
            status = await ctl.wait()
        return status.exit_code, status.oom_killed, ctl.paths.log.read_text()
    finally:
        await ctl.remove()


async def test_env_cmd_workdir_user_hostname_are_honoured(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(
        busybox_layer,
        ["sh", "-c", 'echo "foo=$FOO"; id -u; id -g; id -G; pwd; hostname; cat /etc/hostname; '
                     'grep -c boxy /etc/hosts; echo "home=$HOME"; echo "$PATH"; exit 3'],
        env=["FOO=bar baz"], user="nobody", cwd="/home/nobody", hostname="boxy")
    code, oom, log = await run_to_exit(executor, config)
    lines = [line.split(" ", 3)[3] for line in log.splitlines()]
    assert code == 3 and not oom
    assert lines[:8] == ["foo=bar baz", "1000", "1000", "1000 50", "/home/nobody", "boxy", "boxy", "1"]
    assert lines[8] == "home=/home/nobody"
    assert "/usr/bin" in lines[9]


async def test_numeric_user_and_group(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(busybox_layer, ["sh", "-c", "id -u; id -g"], user="4242:50")
    code, _, log = await run_to_exit(executor, config)
    assert code == 0
    assert [line.split(" ", 3)[3] for line in log.splitlines()] == ["4242", "50"]


async def test_writes_are_copy_on_write(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(busybox_layer, ["sh", "-c", "echo changed > /etc/motd; rm /bin/vi"])
    code, _, _ = await run_to_exit(executor, config)
    assert code == 0
    assert not (busybox_layer / "etc/motd").exists()
    assert (busybox_layer / "bin/vi").is_symlink()


async def test_memory_limit_oom_is_reported(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(busybox_layer, ["tail", "/dev/zero"],
                         resources=Resources(memory_bytes=16 * 1024 * 1024))
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        await ctl.start()
        async with asyncio.timeout(20):
            status = await ctl.wait()
        assert status.exit_code == 137
        assert status.oom_killed
        assert status.failed
        assert status.message == "task: non-zero exit (137): OOMKilled"
        assert (await ctl.state()).exit == status
    finally:
        await ctl.remove()


async def test_pids_limit_is_enforced(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(
        busybox_layer, ["sh", "-c", "for i in $(seq 1 20); do sleep 30 & done; echo spawned"],
        resources=Resources(pids_limit=8))
    code, _, log = await run_to_exit(executor, config)
    assert "can't fork" in log
    assert code != 0


async def test_cpu_quota_is_applied(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(busybox_layer, ["sleep", "30"], resources=Resources(nano_cpus=500_000_000))
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        quota = next(d for d in executor.layout.cgroup_dirs(config.id) if d.parent.parent.parent.name == "cpu")
        assert (quota / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (quota / "cpu.cfs_period_us").read_text().strip() == "100000"
    finally:
        await ctl.remove()


async def test_trapped_sigterm_stops_at_once(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(
        busybox_layer,
        ["sh", "-c", 'trap "echo got-term; exit 0" TERM; echo ready; while true; do sleep 0.05; done'],
        stop_grace=10.0)
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        await ctl.start()
        await wait_for_log(ctl.paths.log, "ready")
        began = time.monotonic()
        await ctl.shutdown()
        took = time.monotonic() - began
        status = await ctl.wait()
        assert status.exit_code == 0 and not status.failed
        assert took < 3.0, f"a trapped SIGTERM should stop quickly, took {took:.1f}s"
        assert "got-term" in ctl.paths.log.read_text()
    finally:
        await ctl.remove()


async def test_ignored_sigterm_is_killed_after_grace(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(busybox_layer,
                         ["sh", "-c", 'trap "" TERM; echo ready; while true; do sleep 0.05; done'],
                         stop_grace=1.0)
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        await ctl.start()
        await wait_for_log(ctl.paths.log, "ready")
        began = time.monotonic()
        await ctl.shutdown()
        took = time.monotonic() - began
        status = await ctl.wait()
        assert status.exit_code == 137
        assert not status.oom_killed
        assert 0.9 <= took < 5.0
    finally:
        await ctl.remove()


async def test_custom_stop_signal(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(
        busybox_layer,
        ["sh", "-c", 'trap "echo got-usr1; exit 5" USR1; echo ready; while true; do sleep 0.05; done'],
        stop_signal="SIGUSR1", stop_grace=10.0)
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        await ctl.start()
        await wait_for_log(ctl.paths.log, "ready")
        await ctl.shutdown()
        assert (await ctl.wait()).exit_code == 5
    finally:
        await ctl.remove()


async def test_unhealthy_container_fails_wait(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(
        busybox_layer,
        ["sh", "-c", "touch /tmp/healthy; echo ready; sleep 1; rm /tmp/healthy; sleep 60"],
        healthcheck=Healthcheck(test=["test", "-f", "/tmp/healthy"], interval=0.2, timeout=2.0,
                                retries=2))
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        await ctl.start()
        with pytest.raises(ContainerUnhealthy, match="unhealthy"):
            async with asyncio.timeout(15):
                await ctl.wait()
        assert ctl.health is not None
        health = ctl.health.tracker.to_engine()
        assert health["Status"] == "unhealthy"
        assert health["FailingStreak"] >= 2
        assert (await ctl.state()).status == "running"   # the agent decides to stop it
    finally:
        await ctl.remove()


async def test_failing_probe_during_start_period_does_not_count(executor: Executor,
                                                                busybox_layer: Path) -> None:
    # Probes fail for the first 0.8 s (inside the start period, with retries=1); the container
    # then stays up until the test, having seen it healthy, tells it to exit.
    config = make_config(
        busybox_layer, ["sh", "-c", "sleep 0.8; touch /tmp/up; while [ ! -f /tmp/done ]; do sleep 0.05; done"],
        healthcheck=Healthcheck(test=["test", "-f", "/tmp/up"], interval=0.2, timeout=2.0,
                                retries=1, start_period=5.0))
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        async with asyncio.timeout(15):
            await ctl.start()
        # start() returns once the container is healthy: the task stays STARTING (out of every
        # load balancer's rotation) until it can serve.
        assert ctl.health is not None and ctl.health.status == "healthy"
        assert (await executor.runc.exec(ctl.id, ["test", "-f", "/tmp/up"], timeout=10))[0] == 0
        async with asyncio.timeout(15):
            waiting = asyncio.create_task(ctl.wait())     # wait() runs the health checks

            async def healthy() -> bool:                  # no event: the monitor's status is polled
                assert not waiting.done(), f"ended before it was healthy: {waiting.result()}"
                return ctl.health is not None and ctl.health.status == "healthy"
            try:
                await async_wait_until(healthy, timeout=15, what="the container healthy under wait()")
                await executor.runc.exec(ctl.id, ["touch", "/tmp/done"], timeout=10)
                status = await waiting
            finally:
                waiting.cancel()
        assert status.exit_code == 0
    finally:
        await ctl.remove()


async def test_a_container_that_stops_before_it_is_healthy_fails_to_start(executor: Executor,
                                                                           busybox_layer: Path) -> None:
    config = make_config(busybox_layer, ["sh", "-c", "sleep 0.3; exit 4"],
                         healthcheck=Healthcheck(test=["test", "-f", "/tmp/never"], interval=0.2, timeout=2.0,
                                                 retries=100))
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        with pytest.raises(ExecutorError, match="stopped before it was healthy"):
            async with asyncio.timeout(15):
                await ctl.start()
    finally:
        await ctl.remove()


async def test_bad_user_and_missing_bind_source_give_clear_errors(executor: Executor,
                                                                  busybox_layer: Path) -> None:
    from worker.executor import ExecutorError, MountSpec

    ctl = executor.controller(make_config(busybox_layer, ["true"], user="ghost"))
    with pytest.raises(ExecutorError, match="unable to find user ghost"):
        await ctl.prepare()
    assert mounts_under(executor.layout.states_dir) == []      # a failed prepare is undone
    assert not ctl.paths.exists()
    await ctl.remove()
    ctl = executor.controller(make_config(busybox_layer, ["true"], mounts=[
        MountSpec(type="bind", source="/nonexistent/shoal-src", target="/x")]))
    with pytest.raises(ExecutorError, match="bind source path does not exist"):
        await ctl.prepare()
    await ctl.remove()
    ctl = executor.controller(make_config(busybox_layer, ["/no/such/binary"]))
    with pytest.raises(ExecutorError, match="no such file"):
        await ctl.prepare()
        await ctl.start()
    await ctl.remove()


async def test_state_from_files_agrees_with_runc_state(executor: Executor, busybox_layer: Path) -> None:
    config = make_config(busybox_layer, ["sh", "-c", "echo ready; exec sleep 30"])
    ctl = executor.controller(config)
    runc = executor.runc

    async def both() -> tuple[str, str]:
        quick = runc._quick_state(config.id)
        rc, out, _ = await runc._run("state", config.id)
        assert quick is not None and rc == 0
        return quick["status"], json.loads(out)["status"]

    try:
        await ctl.prepare()
        assert await both() == ("created", "created")
        await ctl.start()
        assert await both() == ("running", "running")
        await ctl.terminate()
        assert await both() == ("stopped", "stopped")
        await ctl.remove()
        assert runc._quick_state(config.id) == {"status": "absent"}
        assert await runc.state(config.id) is None
    finally:
        await ctl.remove()
