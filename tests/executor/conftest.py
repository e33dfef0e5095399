"""Fixtures for executor tests with real runc containers: a busybox image layer built from
busybox-static, and an Executor on a fresh data dir whose containers, shims, mounts and cgroups
are force-removed after each test (`destroy_executor`: through its own cgroups), even when the
test failed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from worker.executor import ContainerConfig, Executor, rootfs
from worker.executor.teardown import destroy_executor

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


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The executor's data dir; after the test, `destroy_executor` must leave no mount below
    the test's tmp dir (the run tmpfs, overlay rootfs mounts): a test whose run leaves one fails
    (and the mount is taken down by its path, so one failure does not pile up)."""
    d = tmp_path / "data"
    d.mkdir()
    try:
        yield d
    finally:
        destroy_executor(d)
        left = rootfs.mounts_under(tmp_path)
        if left:
            rootfs.unmount_below(tmp_path)
            pytest.fail(f"mounts left behind after destroy_executor: {left}")


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
