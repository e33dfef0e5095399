"""`worker.exec.do` over real containers (the runc ContainerController): every step repeated is
harmless, a fatal error at prepare rejects the task, one after start fails it, and a stop that
runc could not make is a temporary error: retried, the task left running until it succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import Task, TaskState, TaskStatus
from tests.executor.conftest import make_config, needs_root_and_runc, wait_for_log
from tests.support.exec_steps import step, task_in
from worker.exec import Outcome, TemporaryError, do
from worker.executor import ContainerController, Executor
from worker.executor.runtime import RuntimeFailure

pytestmark = needs_root_and_runc()


def task_for(ctl: ContainerController, state: TaskState, desired: TaskState = TaskState.RUNNING) -> Task:
    return task_in(state, desired, task_id=ctl.id)


async def test_each_step_repeated_gives_the_same_transition(executor: Executor, busybox_layer: Path) -> None:
    ctl = executor.controller(make_config(busybox_layer, ["sh", "-c", "exit 3"]))
    try:
        for state, then in ((TaskState.PREPARING, TaskState.READY), (TaskState.STARTING, TaskState.RUNNING)):
            for _ in range(2):       # e.g. the daemon restarted before the first one was reported
                result = await do(task_for(ctl, state), ctl)
                assert (result.outcome, result.status.state) == (Outcome.ADVANCED, then), result.status.err
        for _ in range(2):
            result = await do(task_for(ctl, TaskState.RUNNING), ctl)
            assert (result.status.state, result.status.err) == (TaskState.FAILED, "task: non-zero exit (3)")
            assert result.status.container_status == {"ContainerID": ctl.id, "PID": 0, "ExitCode": 3}
    finally:
        await ctl.remove()


async def test_a_fatal_prepare_error_rejects_the_task(executor: Executor, busybox_layer: Path) -> None:
    ctl = executor.controller(make_config(busybox_layer, ["true"], user="ghost"))
    try:
        result = await do(task_for(ctl, TaskState.PREPARING), ctl)
        assert (result.status.state, result.status.message) == (TaskState.REJECTED, "preparing failed")
        assert "unable to find user ghost" in result.status.err
        assert (await ctl.state()).status == "absent"
    finally:
        await ctl.remove()


async def test_a_stop_runc_could_not_make_is_retried(executor: Executor, busybox_layer: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    trapped = ["sh", "-c", "trap 'exit 0' TERM; echo ready; sleep 300 & wait"]
    ctl = executor.controller(make_config(busybox_layer, trapped))
    try:
        task = task_for(ctl, TaskState.PREPARING)
        assert (await step(task, ctl)).status.state == TaskState.READY
        task.status = TaskStatus(TaskState.STARTING)
        assert (await step(task, ctl)).status.state == TaskState.RUNNING
        await wait_for_log(ctl.paths.log, "ready")   # a TERM before the trap is set is lost on PID 1

        async def kill_fails(*_args: object, **_kw: object) -> bool:
            raise RuntimeFailure(f"runc kill {ctl.id} 15: resource temporarily unavailable")

        monkeypatch.setattr(executor.runc, "kill", kill_fails)
        with pytest.raises(TemporaryError, match="stopping container"):
            await ctl.shutdown()
        task.desired_state = TaskState.SHUTDOWN
        retried = await step(task, ctl)
        assert (retried.outcome, retried.status.state) == (Outcome.RETRY, TaskState.RUNNING)
        assert "resource temporarily unavailable" in retried.status.err
        assert (await ctl.state()).status == "running"

        monkeypatch.undo()
        stopped = await step(task, ctl)
        assert (stopped.outcome, stopped.status.state, stopped.status.err) == (Outcome.ADVANCED, TaskState.SHUTDOWN, "")
        state = await ctl.state()
        assert state.status == "stopped" and state.exit is not None and state.exit.exit_code == 0
    finally:
        await ctl.remove()
