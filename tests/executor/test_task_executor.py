"""The agent's TaskRunner driving real containers through RuncTaskExecutor and a real ImageStore:
image config honoured, completion, OOM and unhealthy tasks failing with the reason, bad images
rejected with a clear error, and the container removed when the task is unassigned."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from model import Task, TaskState, TaskStatus
from tests.executor.conftest import needs_root_and_runc
from tests.support.images import import_busybox
from worker.agent.task_runner import TaskRunner
from worker.executor import Executor
from worker.executor.task_executor import RuncTaskExecutor
from worker.images.store import ImageStore

pytestmark = needs_root_and_runc()


@pytest.fixture
async def task_executor(executor: Executor, tmp_path: Path) -> RuncTaskExecutor:
    images = ImageStore(tmp_path / "images")
    await import_busybox(images, tmp_path, tag="busybox:latest",
                         healthcheck={"Test": ["NONE"]})
    await import_busybox(images, tmp_path, tag="busybox:sick", cmd=["sleep", "60"],
                         healthcheck={"Test": ["CMD", "test", "-e", "/nonexistent"],
                                      "Interval": 200_000_000, "Timeout": 1_000_000_000, "Retries": 2})
    return RuncTaskExecutor(executor, images, hostname="node-a")


async def run_task(tx: RuncTaskExecutor, task_id: str,
                   spec: dict[str, Any]) -> tuple[TaskStatus, list[TaskStatus]]:
    task = Task(id=task_id, spec=spec, service_id="svc", service_name="web", slot=1, node_id="n1")
    reports: list[TaskStatus] = []
    terminal = asyncio.Event()

    def report(_tid: str, status: TaskStatus) -> None:
        reports.append(status)
        if status.state >= TaskState.COMPLETE:
            terminal.set()

    runner = TaskRunner(task, tx, report)
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(runner.run())
        async with asyncio.timeout(20):
            await terminal.wait()
        runner.unassign()
        async with asyncio.timeout(20):
            await run
    assert tx.existing(task_id) is None, "unassigning removes the container"
    return reports[-1] if reports[-1].state != TaskState.SHUTDOWN else reports[-2], reports


async def test_image_config_and_completion(task_executor: RuncTaskExecutor) -> None:
    final, reports = await run_task(task_executor, "task0000000000000000000001", {"ContainerSpec": {
        "Image": "busybox:latest",
        "Args": ["sh", "-c", "echo $GREETING $EXTRA; pwd; hostname; exit 0"], "Env": ["EXTRA=there"]}})
    states = [r.state for r in reports]
    assert TaskState.PREPARING in states and TaskState.RUNNING in states
    assert final.state == TaskState.COMPLETE
    assert final.container_status and final.container_status["ExitCode"] == 0


async def test_oom_task_fails_with_reason(task_executor: RuncTaskExecutor) -> None:
    final, _ = await run_task(task_executor, "task0000000000000000000002", {
        "ContainerSpec": {"Image": "busybox:latest", "Args": ["tail", "/dev/zero"]},
        "Resources": {"Limits": {"MemoryBytes": 16 * 1024 * 1024}}})
    assert final.state == TaskState.FAILED
    assert final.err == "task: non-zero exit (137): OOMKilled"


async def test_unhealthy_task_fails(task_executor: RuncTaskExecutor) -> None:
    final, _ = await run_task(task_executor, "task0000000000000000000003",
                              {"ContainerSpec": {"Image": "busybox:sick"}})
    assert final.state == TaskState.FAILED
    assert "unhealthy" in final.err


async def test_missing_image_is_rejected_clearly(task_executor: RuncTaskExecutor) -> None:
    task_executor.pull_policy = "never"
    final, _ = await run_task(task_executor, "task0000000000000000000004",
                              {"ContainerSpec": {"Image": "nosuchimage:1"}})
    assert final.state == TaskState.REJECTED
    assert "nosuchimage" in final.err
