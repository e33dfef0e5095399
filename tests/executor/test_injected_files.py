"""Real containers with injected files (a service's secrets and configs): the container reads
them at their targets with the owner and mode given, cannot write them, their host copies live
on the executor's run tmpfs and never under the on-disk containers dir, and remove leaves
nothing behind."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from tests.executor.conftest import make_config, needs_root_and_runc, wait_for_log
from worker.executor import Executor, ExecutorError
from worker.executor.rootfs import mounts_under
from worker.executor.spec import InjectedFile

pytestmark = needs_root_and_runc()

SECRET = b"hunter2-secret-value\n"
CONFIG = b"listen=8080\n"
SCRIPT = b"#!/bin/sh\necho script-ran\n"


def filesystem_of(path: Path) -> str:
    """The type of the file system `path` is on (the longest mount point above it)."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def files_containing(root: Path, needle: bytes, skip: set[str]) -> list[Path]:
    found = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if name in skip or not path.is_file() or path.is_symlink():
                continue
            if needle in path.read_bytes():
                found.append(path)
    return found


async def test_secret_and_config_files_are_readable_read_only_and_never_on_disk(
        executor: Executor, busybox_layer: Path) -> None:
    files = [
        InjectedFile("/run/secrets/db-password", SECRET, uid=1000, gid=50, mode=0o400, source="secret db-password"),
        InjectedFile("/app.conf", CONFIG, source="config app.conf"),
        InjectedFile("/etc/app/entry.sh", SCRIPT, mode=0o755, source="config entry"),
    ]
    config = make_config(busybox_layer, [
        "sh", "-c",
        "trap 'exit 0' TERM; cat /run/secrets/db-password /app.conf; "
        "stat -c 'meta %n %a %u %g' /run/secrets/db-password /app.conf /etc/app/entry.sh; "
        "/etc/app/entry.sh; "
        "if echo overwrite > /app.conf; then echo writable; else echo read-only; fi; "
        "echo done; sleep 100000 & wait"], files=files)
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        await ctl.start()
        log = await wait_for_log(ctl.paths.log, "done")
        assert "hunter2-secret-value" in log and "listen=8080" in log
        assert "meta /run/secrets/db-password 400 1000 50" in log
        assert "meta /app.conf 444 0 0" in log
        assert "meta /etc/app/entry.sh 755 0 0" in log
        assert "script-ran" in log and "read-only" in log
        assert not any(line.endswith(" writable") for line in log.splitlines())

        adopted = executor.get(config.id)     # what a restarted daemon reads back (on the tmpfs)
        assert adopted is not None and adopted.config.files == files
        # The host copies: under the state dir, on the run tmpfs, with the owner and mode given.
        host_files = sorted((ctl.paths.state / "files").iterdir())
        assert [p.read_bytes() for p in host_files] == [SECRET, CONFIG, SCRIPT]
        st = host_files[0].stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o400, 1000, 50)
        assert executor.layout.run_dir in host_files[0].parents
        assert executor.layout.containers_dir not in host_files[0].parents
        assert filesystem_of(host_files[0]) == "tmpfs"
        # Nothing on disk holds the data (the log does only because this container printed it).
        assert files_containing(executor.layout.containers_dir, b"hunter2-secret-value", {"container.log"}) == []
        assert files_containing(executor.layout.containers_dir, b"listen=8080", {"container.log"}) == []

        async with asyncio.timeout(15):
            await ctl.shutdown()
            status = await ctl.wait()
        assert status.exit_code == 0
    finally:
        await ctl.remove()
    assert not ctl.paths.state.exists() and not ctl.paths.dir.exists()
    assert mounts_under(executor.layout.data_dir) == [str(executor.layout.run_dir)]
    assert files_containing(executor.layout.data_dir, b"hunter2-secret-value", set()) == []


async def test_a_bad_injected_target_is_refused_before_anything_is_made(
        executor: Executor, busybox_layer: Path) -> None:
    config = make_config(busybox_layer, ["true"], files=[InjectedFile("/run/secrets/../../etc/x", b"x")])
    ctl = executor.controller(config)
    with pytest.raises(ExecutorError, match="must not contain"):
        await ctl.prepare()
    assert not ctl.paths.state.exists() and not ctl.paths.dir.exists()


async def test_injected_files_work_on_a_read_only_root_file_system(executor: Executor, busybox_layer: Path) -> None:
    files = [InjectedFile("/run/secrets/nested/token", b"tok\n", uid=1000, gid=1000, mode=0o400)]
    config = make_config(busybox_layer, ["sh", "-c", "cat /run/secrets/nested/token; echo done"],
                         files=files, read_only=True, user="nobody")
    ctl = executor.controller(config)
    try:
        await ctl.prepare()
        await ctl.start()
        log = await wait_for_log(ctl.paths.log, "done")
        assert "tok" in log       # read as uid 1000, the owner of a 0400 file
        async with asyncio.timeout(15):
            assert (await ctl.wait()).exit_code == 0
    finally:
        await ctl.remove()
