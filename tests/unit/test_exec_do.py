"""`worker.exec.do` over the in-memory controller: one transition per call, the desired state as a
bound, temporary errors retried in place, fatal ones REJECTED before STARTING and FAILED after,
and cancellation passed through. No runner, no dispatcher, no sleeps."""

from __future__ import annotations

import asyncio

import pytest

from model import TaskState, TaskStatus
from tests.support.exec_steps import step, task_in
from tests.support.fake_executor import FakeController
from worker.exec import ExecutorError, ExitStatus, Outcome, TemporaryError, do, failure, is_temporary


async def test_each_call_makes_one_transition_up_to_running_then_the_exit() -> None:
    task, ctl = task_in(TaskState.ASSIGNED), FakeController("c")
    seen = []
    for _ in range(5):
        result = await step(task, ctl)
        assert result.outcome is Outcome.ADVANCED
        seen.append((result.status.state, result.status.message))
    assert seen == [(TaskState.ACCEPTED, "accepted"), (TaskState.PREPARING, "preparing"),
                    (TaskState.READY, "prepared"), (TaskState.STARTING, "starting"),
                    (TaskState.RUNNING, "started")]
    assert ctl.calls == ["prepare", "start"]
    assert task.status.container_status == {"ContainerID": task.id, "PID": 4242}

    waiting = asyncio.create_task(step(task, ctl))
    await ctl.waiting.wait()
    assert not waiting.done()
    ctl.finish(0)
    result = await waiting
    assert (result.outcome, result.status.state, result.status.err) == (Outcome.ADVANCED, TaskState.COMPLETE, "")
    assert result.status.container_status == {"ContainerID": task.id, "PID": 0, "ExitCode": 0}
    assert (await step(task, ctl)).outcome is Outcome.NOOP


async def test_a_task_with_host_mode_ports_reports_them_once_running_and_keeps_them() -> None:
    task, ctl = task_in(TaskState.STARTING), FakeController("c", status="created")
    task.endpoint = {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]}
    result = await step(task, ctl)
    ports = {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]}
    assert result.status.state == TaskState.RUNNING and result.status.port_status == ports
    assert result.status.to_api()["PortStatus"] == ports
    waiting = asyncio.create_task(step(task, ctl))
    await ctl.waiting.wait()
    ctl.finish(0)
    assert (await waiting).status.port_status == ports
    plain, ctl = task_in(TaskState.STARTING), FakeController("c", status="created")
    assert (await step(plain, ctl)).status.to_api()["PortStatus"] == {}


async def test_do_leaves_the_given_task_status_alone() -> None:
    task = task_in(TaskState.PREPARING)
    result = await do(task, FakeController("c"))
    assert result.status.state == TaskState.READY
    assert task.status.state == TaskState.PREPARING and task.status.message == "as given"


async def test_a_non_zero_exit_fails_the_task_with_its_code() -> None:
    task, ctl = task_in(TaskState.RUNNING), FakeController("c")
    ctl.status, ctl.exit = "stopped", ExitStatus(3)
    ctl.exited.set()
    result = await do(task, ctl)
    assert (result.status.state, result.status.message) == (TaskState.FAILED, "task failed")
    assert result.status.err == "task: non-zero exit (3)"
    assert result.status.container_status == {"ContainerID": task.id, "PID": 0, "ExitCode": 3}


async def test_ready_waits_until_running_is_desired() -> None:
    task, ctl = task_in(TaskState.PREPARING, desired=TaskState.READY), FakeController("c")
    assert (await step(task, ctl)).status.state == TaskState.READY
    assert (await step(task, ctl)).outcome is Outcome.NOOP
    assert ctl.calls == ["prepare"]
    task.desired_state = TaskState.RUNNING
    assert (await step(task, ctl)).status.state == TaskState.STARTING


@pytest.mark.parametrize(("state", "method", "terminal", "message"), [
    (TaskState.PREPARING, "prepare", TaskState.REJECTED, "preparing failed"),   # never ran
    (TaskState.STARTING, "start", TaskState.FAILED, "starting failed"),         # may have run
    (TaskState.RUNNING, "wait", TaskState.FAILED, "task failed"),
])
async def test_a_fatal_error_rejects_before_starting_and_fails_after(
        state: TaskState, method: str, terminal: TaskState, message: str) -> None:
    ctl = FakeController("c", status="created" if state == TaskState.STARTING else "running",
                         fail={method: [ExecutorError("task: it broke")]})
    result = await do(task_in(state), ctl)
    assert result.outcome is Outcome.ADVANCED
    assert (result.status.state, result.status.message, result.status.err) == (terminal, message, "task: it broke")


@pytest.mark.parametrize(("state", "method", "then"), [
    (TaskState.PREPARING, "prepare", TaskState.READY),
    (TaskState.STARTING, "start", TaskState.RUNNING),
])
async def test_a_temporary_error_keeps_the_state_and_the_step_is_retried(
        state: TaskState, method: str, then: TaskState) -> None:
    ctl = FakeController("c", status="created" if state == TaskState.STARTING else "absent",
                         fail={method: [TemporaryError("host busy"), TemporaryError("host still busy")]})
    task = task_in(state)
    for err in ("host busy", "host still busy"):
        result = await step(task, ctl)
        assert (result.outcome, result.status.state, result.status.err) == (Outcome.RETRY, state, err)
        assert result.status.message == "as given"
    result = await step(task, ctl)
    assert (result.outcome, result.status.state, result.status.err) == (Outcome.ADVANCED, then, "")
    assert ctl.calls == [method] * 3


async def test_a_temporary_error_while_waiting_keeps_the_task_running() -> None:
    ctl = FakeController("c", status="running", fail={"wait": [TemporaryError("lost the shim's pidfd")]})
    result = await do(task_in(TaskState.RUNNING), ctl)
    assert (result.outcome, result.status.state) == (Outcome.RETRY, TaskState.RUNNING)


def test_an_error_raised_from_a_temporary_one_is_temporary() -> None:
    try:
        try:
            raise TemporaryError("EAGAIN")
        except TemporaryError as e:
            raise ExecutorError("preparing container web.1: EAGAIN") from e
    except ExecutorError as wrapped:
        assert is_temporary(wrapped)
    try:
        try:
            raise TemporaryError("EAGAIN")
        except TemporaryError:
            raise ExecutorError("while handling it, something else broke") from None
    except ExecutorError as unrelated:
        assert not is_temporary(unrelated)
    assert not is_temporary(RuntimeError("a bug"))       # anything not marked is fatal


def test_failure_of_any_exception_is_fatal_and_keeps_its_text() -> None:
    status = TaskStatus(TaskState.PREPARING)
    result = failure(status, KeyError("x"), "preparing failed")
    assert (result.status.state, result.status.err) == (TaskState.REJECTED, "'x'")
    assert status.state == TaskState.PREPARING
    assert failure(status, RuntimeError(), "preparing failed").status.err == "RuntimeError"


@pytest.mark.parametrize("state", [TaskState.ASSIGNED, TaskState.READY, TaskState.RUNNING])
async def test_desired_shutdown_stops_the_container_and_ends_in_shutdown(state: TaskState) -> None:
    ctl = FakeController("c", status="running" if state == TaskState.RUNNING else "absent")
    task = task_in(state, desired=TaskState.SHUTDOWN)
    result = await step(task, ctl)
    assert (result.outcome, result.status.state, result.status.message) == (
        Outcome.ADVANCED, TaskState.SHUTDOWN, "shutdown")
    assert (await step(task, ctl)).outcome is Outcome.NOOP
    assert ctl.calls == ["shutdown"]                  # once: a SHUTDOWN task is left alone


@pytest.mark.parametrize(("state", "terminal"), [(TaskState.READY, TaskState.REJECTED),
                                                 (TaskState.RUNNING, TaskState.FAILED)])
async def test_shutdown_errors_follow_the_same_split(state: TaskState, terminal: TaskState) -> None:
    ctl = FakeController("c", fail={"shutdown": [TemporaryError("runc busy"), ExecutorError("runc gone")]})
    task = task_in(state, desired=TaskState.SHUTDOWN)
    retried = await step(task, ctl)
    assert (retried.outcome, retried.status.state, retried.status.err) == (Outcome.RETRY, state, "runc busy")
    failed = await step(task, ctl)
    assert (failed.status.state, failed.status.message, failed.status.err) == (terminal, "shutdown failed", "runc gone")


async def test_an_ended_task_keeps_its_status_but_its_container_is_stopped() -> None:
    # e.g. failed by its health check: the container still runs until the task is shut down
    ctl = FakeController("c", status="running",
                         fail={"shutdown": [TemporaryError("runc busy"), ExecutorError("runc gone")]})
    task = task_in(TaskState.FAILED, desired=TaskState.SHUTDOWN)
    task.status.err = "task: container c is unhealthy"
    for outcome in (Outcome.RETRY, Outcome.NOOP, Outcome.NOOP):
        result = await step(task, ctl)
        assert result.outcome is outcome
        assert (result.status.state, result.status.err) == (TaskState.FAILED, "task: container c is unhealthy")
    assert ctl.calls == ["shutdown"] * 3 and ctl.status == "stopped"


async def test_an_ended_task_is_not_moved_by_a_lower_desired_state() -> None:
    ctl = FakeController("c")
    for state in (TaskState.COMPLETE, TaskState.FAILED, TaskState.REJECTED):
        result = await do(task_in(state), ctl)
        assert (result.outcome, result.status.state) == (Outcome.NOOP, state)
    assert ctl.calls == []


async def test_cancelling_a_step_propagates_and_leaves_the_container_alone() -> None:
    ctl = FakeController("c", status="running")
    waiting = asyncio.create_task(do(task_in(TaskState.RUNNING), ctl))
    await ctl.waiting.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert ctl.status == "running" and ctl.calls == []
