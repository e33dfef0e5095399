"""Fixtures for executor tests with real runc containers: a busybox image layer built from
busybox-static, and an Executor on a fresh data dir whose containers, shims, mounts and cgroups
are force-removed after each test, by their own ids and pids, even when the test failed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from worker.executor import ContainerConfig, Executor
from worker.executor.layout import SHIM_CGROUP, Layout
from worker.executor.rootfs import mounts_under, unmount

BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"


def needs_root_and_runc() -> pytest.MarkDecorator:
    missing = [b for b in ("runc", "conmon") if not (shutil.which(b) or Path(f"/usr/sbin/{b}").exists())]
    return pytest.mark.skipif(os.geteuid() != 0 or bool(missing) or not Path(BUSYBOX).exists(),
                              reason="needs root, runc, conmon and busybox-static")


def build_busybox_layer(root: Path) -> Path:
    """A minimal image layer: busybox and its applets, /etc/passwd, /etc/group, /tmp."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:1000:1000:nobody:/home/nobody:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nnobody:x:1000:\nstaff:x:50:nobody\n")
    for d in ("tmp", "root", "home/nobody", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True)
    os.chmod(root / "tmp", 0o1777)
    os.chown(root / "home/nobody", 1000, 1000)
    return root


@pytest.fixture(scope="session")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_layer(tmp_path_factory.mktemp("layers") / "busybox")


def force_clean(data_dir: Path) -> None:
    """Remove every trace of containers under data_dir, by id and pid, ignoring errors."""
    layout = Layout(data_dir)
    runc_root = layout.runc_root
    if runc_root.is_dir():
        for state in runc_root.iterdir():
            subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", state.name],
                           capture_output=True, check=False)
    for ctr in layout.containers_dir.iterdir() if layout.containers_dir.is_dir() else []:
        pidfile = ctr / "conmon.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if ctr.name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
    leftover = {int(pid) for parent in layout.cgroup_dirs()   # a spawner nobody closed
                for pid in read_if_exists(parent / SHIM_CGROUP / "cgroup.procs").split()}
    for pid in leftover:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while leftover and time.monotonic() < deadline:   # poll, with a deadline, until they are gone
        for pid in list(leftover):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not Path(f"/proc/{pid}").exists():
                leftover.discard(pid)
        time.sleep(0.01)
    for mount_point in sorted(mounts_under(data_dir), reverse=True):
        with contextlib.suppress(OSError):
            unmount(Path(mount_point))
    for parent in layout.cgroup_dirs():
        if parent.is_dir():
            for child in parent.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "data"
    d.mkdir()
    try:
        yield d
    finally:
        force_clean(d)


@pytest.fixture
async def executor(data_dir: Path) -> AsyncIterator[Executor]:
    ex = Executor(data_dir)
    await ex.start_up()
    try:
        yield ex
    finally:
        ex.close()


_counter = iter(range(1_000_000))


def make_config(layer: Path, args: list[str], **kw: object) -> ContainerConfig:
    cid = str(kw.pop("id", f"t{os.getpid()}x{next(_counter)}"))
    return ContainerConfig(id=cid, name=str(kw.pop("name", cid)), lower_dirs=[layer], args=args,
                           **kw)  # type: ignore[arg-type]


async def wait_for_log(log_path: Path, text: str, timeout: float = 10.0) -> str:
    """Poll the container log (with a deadline) until it contains `text`."""
    import asyncio

    async with asyncio.timeout(timeout):
        while True:
            content = read_if_exists(log_path)
            if text in content:
                return content
            await asyncio.sleep(0.02)


def read_if_exists(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
