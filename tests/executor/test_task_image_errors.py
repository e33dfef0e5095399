"""Image failures reach the task status as clear errors, and leave nothing half-installed:
a registry serving a blob whose content does not match its digest, and a missing image."""

from __future__ import annotations

import asyncio
from pathlib import Path

from model import Task, TaskState, TaskStatus
from tests.executor.conftest import needs_root_and_runc
from tests.support.images import build_busybox_image, push_image, sha256
from tests.support.registry import RegistryProcess, registry  # noqa: F401 - the fixture
from worker.agent.task_runner import TaskRunner
from worker.executor import Executor
from worker.executor.task_executor import RuncTaskExecutor
from worker.images.store import ImageStore

pytestmark = needs_root_and_runc()


async def final_status(tx: RuncTaskExecutor, image: str) -> TaskStatus:
    task = Task(id="task0000000000000000000077", spec={"ContainerSpec": {"Image": image}},
                service_id="svc", service_name="web", slot=1, node_id="n1")
    reports: list[TaskStatus] = []
    done = asyncio.Event()

    def report(_tid: str, status: TaskStatus) -> None:
        reports.append(status)
        if status.state.is_terminal:
            done.set()

    runner = TaskRunner(task, tx, report)
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(runner.run())
        async with asyncio.timeout(30):
            await done.wait()
        runner.unassign()
        async with asyncio.timeout(20):
            await run
    return next(r for r in reports if r.state.is_terminal)


def store_contents(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "tmp" not in p.parts}


async def test_corrupt_blob_from_registry_rejects_the_task_and_installs_nothing(
        executor: Executor, tmp_path: Path, registry: RegistryProcess) -> None:  # noqa: F811
    image = build_busybox_image(cmd=["true"], healthcheck={"Test": ["NONE"]}, labels={"case": "corrupt"})
    await push_image(registry.url, "corrupt/bb", "v1", image)
    # Damage the top layer's bytes inside the registry's storage: it still serves them under the
    # old digest, which the pull must notice.
    digest = sha256(image.layer_blobs[-1]).removeprefix("sha256:")
    data = next((registry.workdir / "data").rglob(f"blobs/sha256/{digest[:2]}/{digest}/data"))
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))

    images = ImageStore(tmp_path / "images")
    before = store_contents(tmp_path / "images")
    status = await final_status(RuncTaskExecutor(executor, images), f"{registry.host}/corrupt/bb:v1")
    assert status.state == TaskState.REJECTED
    assert "digest" in status.err.lower() and digest[:12] in status.err, status.err
    assert images.images() == []
    assert store_contents(tmp_path / "images") - before <= {"repositories.json"}, "nothing half-installed"


async def test_missing_image_rejects_the_task(executor: Executor, tmp_path: Path,
                                              registry: RegistryProcess) -> None:  # noqa: F811
    images = ImageStore(tmp_path / "images")
    status = await final_status(RuncTaskExecutor(executor, images), f"{registry.host}/absent/image:v9")
    assert status.state == TaskState.REJECTED
    assert "absent/image:v9" in status.err and ("not found" in status.err.lower() or "unknown" in status.err.lower())
