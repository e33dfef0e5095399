"""The agent's TaskRunner over the in-memory executor: what it reports, how it retries temporary
errors (in place, cut short by a change of the task), REJECTED vs FAILED for fatal ones, live
restore and removal. Waits are on the reported statuses (events), never on a clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from model import Task, TaskState, TaskStatus, new_id
from tests.support.fake_executor import FakeController, FakeExecutor
from worker.agent.task_runner import TaskRunner
from worker.exec import ExecutorError, TemporaryError

TIMEOUT = 5.0


class Reports:
    """The statuses a runner reported, and a way to wait for one."""

    def __init__(self) -> None:
        self.statuses: list[TaskStatus] = []
        self._new = asyncio.Event()

    def __call__(self, _task_id: str, status: TaskStatus) -> None:
        self.statuses.append(status)
        self._new.set()

    async def until(self, check: Callable[[TaskStatus], bool]) -> TaskStatus:
        async with asyncio.timeout(TIMEOUT):
            while True:
                found = next((s for s in self.statuses if check(s)), None)
                if found is not None:
                    return found
                self._new.clear()
                await self._new.wait()

    async def state(self, state: TaskState) -> TaskStatus:
        return await self.until(lambda s: s.state == state)

    @property
    def states(self) -> list[TaskState]:
        return [s.state for s in self.statuses]


def new_task(desired: TaskState = TaskState.RUNNING, state: TaskState = TaskState.ASSIGNED) -> Task:
    t = Task(id=new_id(), service_id="svc", slot=1, node_id="n1", service_name="web",
             spec={"ContainerSpec": {"Image": "busybox"}})
    t.status = TaskStatus(state, "", "assigned")
    t.desired_state = desired
    return t


@asynccontextmanager
async def running(runner: TaskRunner) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_temporary_prepare_errors_are_retried_until_the_task_runs() -> None:
    ex, reports = FakeExecutor(), Reports()
    task = new_task()
    ex.controllers[task.id] = ctl = FakeController(task.id, fail={"prepare": [
        TemporaryError("preparing container web.1: too many open files"), TemporaryError("still")]})
    runner = TaskRunner(task, ex, reports, retry_delay=0)
    async with running(runner):
        await reports.state(TaskState.RUNNING)
    assert ctl.calls == ["prepare", "prepare", "prepare", "start"]
    assert TaskState.REJECTED not in reports.states
    retried = [s for s in reports.statuses if s.err]
    assert [(s.state, s.err) for s in retried] == [
        (TaskState.PREPARING, "preparing container web.1: too many open files"), (TaskState.PREPARING, "still")]
    assert runner.status.err == ""


async def test_a_temporary_error_making_the_controller_is_retried() -> None:
    ex, reports = FakeExecutor(), Reports()
    task = new_task()
    ex.fail_controller[task.id] = [TemporaryError("registry: connection reset")]
    async with running(TaskRunner(task, ex, reports, retry_delay=0)):
        await reports.state(TaskState.RUNNING)
    assert ex.controllers[task.id].calls == ["prepare", "start"]


async def test_a_fatal_error_before_starting_rejects_the_task() -> None:
    ex, reports = FakeExecutor(), Reports()
    task = new_task()
    ex.fail_controller[task.id] = [ExecutorError("No such image: nope:latest")]
    runner = TaskRunner(task, ex, reports, retry_delay=0)
    async with running(runner):
        rejected = await reports.state(TaskState.REJECTED)
    assert (rejected.message, rejected.err) == ("preparing failed", "No such image: nope:latest")
    assert task.id not in ex.controllers


async def test_a_fatal_error_from_starting_on_fails_the_task() -> None:
    ex, reports = FakeExecutor(), Reports()
    task = new_task()
    ex.controllers[task.id] = FakeController(task.id, fail={"start": [ExecutorError("runc start: exec failed")]})
    async with running(TaskRunner(task, ex, reports, retry_delay=0)):
        failed = await reports.state(TaskState.FAILED)
    assert (failed.message, failed.err) == ("starting failed", "runc start: exec failed")
    assert TaskState.STARTING in reports.states and TaskState.REJECTED not in reports.states


async def test_a_change_of_the_task_cuts_a_retry_pause_short() -> None:
    ex, reports = FakeExecutor(), Reports()
    task = new_task()
    ex.controllers[task.id] = ctl = FakeController(task.id, fail={"prepare": [TemporaryError("busy")]})
    runner = TaskRunner(task, ex, reports, retry_delay=3600)      # an hour: only a change ends it
    async with running(runner):
        await reports.until(lambda s: s.err == "busy")
        shutdown = task.copy()
        shutdown.desired_state = TaskState.SHUTDOWN
        runner.update(shutdown)
        await reports.state(TaskState.SHUTDOWN)
    assert ctl.calls == ["prepare", "shutdown"]


async def test_a_change_cuts_the_wait_on_a_running_container_short() -> None:
    ex, reports = FakeExecutor(), Reports()
    task = new_task()
    runner = TaskRunner(task, ex, reports)
    async with running(runner):
        await reports.state(TaskState.RUNNING)
        ctl = ex.controllers[task.id]
        await ctl.waiting.wait()
        shutdown = task.copy()
        shutdown.desired_state = TaskState.SHUTDOWN
        runner.update(shutdown)
        await reports.state(TaskState.SHUTDOWN)
    assert ctl.calls == ["prepare", "start", "shutdown"]


async def test_unassigning_stops_reports_shutdown_then_removes_retrying_temporary_errors() -> None:
    ex, reports = FakeExecutor(), Reports()
    task = new_task()
    runner = TaskRunner(task, ex, reports, retry_delay=0)
    run = asyncio.create_task(runner.run())
    await reports.state(TaskState.RUNNING)
    ctl = ex.controllers[task.id]
    ctl.fail["remove"] = [TemporaryError("runc delete: busy")]
    runner.unassign()
    async with asyncio.timeout(TIMEOUT):
        await run                                   # the runner ends once the container is gone
    assert reports.states[-1] == TaskState.SHUTDOWN
    assert ctl.calls == ["prepare", "start", "shutdown", "remove", "remove"]
    assert ctl.status == "removed"


async def test_a_task_removed_before_it_had_a_container_is_reported_shut_down() -> None:
    ex, reports = FakeExecutor(), Reports()
    runner = TaskRunner(new_task(desired=TaskState.READY, state=TaskState.ACCEPTED), ex, reports)
    runner.unassign()
    async with asyncio.timeout(TIMEOUT):
        await runner.run()
    assert reports.states == [TaskState.SHUTDOWN]


async def test_live_restore_picks_the_running_container_up_where_it_is() -> None:
    ex, reports = FakeExecutor(), Reports()
    task = new_task(state=TaskState.RUNNING)
    ex.controllers[task.id] = ctl = FakeController(task.id, status="running")
    async with running(TaskRunner(task, ex, reports)):
        await ctl.waiting.wait()
        ctl.finish(0)
        done = await reports.state(TaskState.COMPLETE)
    assert done.container_status == {"ContainerID": task.id, "PID": 0, "ExitCode": 0}
    assert ctl.calls == []                          # neither prepared nor started again


async def test_a_running_task_whose_container_is_gone_fails() -> None:
    ex, reports = FakeExecutor(), Reports()
    async with running(TaskRunner(new_task(state=TaskState.RUNNING), ex, reports)):
        failed = await reports.state(TaskState.FAILED)
    assert "does not exist" in failed.err
