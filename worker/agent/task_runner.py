"""One task's lifecycle on a worker: the loop around `worker.exec.do`.

Theory of operation: the runner holds the latest assignment of its task (the manager may raise
its desired state at any time) with the status it observed itself, which is canonical and only
moves forward. Each turn of the loop is one `do` (one transition: ACCEPTED → PREPARING → READY
→ STARTING → RUNNING → COMPLETE/FAILED, or SHUTDOWN when the desired state says so), and every
new status is handed to `report`, which delivers it to the dispatcher. After a NOOP the runner
waits for a change of the assignment; after a temporary error (RETRY) for a change or a backoff
delay, whichever comes first; a blocking wait on a running container is cut short by a change.
The controller is the executor's: made (pulling the image) when the task reaches PREPARING, or
found at start when a container for the task exists already (live restore: every step being
idempotent, the steps pick the container up where it is). A task that leaves the assignments
(or whose desired state is REMOVE) is shut down, reported, and its container removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from aio import Backoff, cancel_and_wait
from model import Task, TaskState, TaskStatus, format_time
from worker.exec import (
    ContainerState,
    Controller,
    ExecutorError,
    ExitStatus,
    Outcome,
    Step,
    TaskExecutor,
    do,
    failure,
    is_temporary,
)

__all__ = ["Report", "TaskRunner"]

log = logging.getLogger("shoal.agent.task")

Report = Callable[[str, TaskStatus], None]

RETRY_DELAY = 0.1          # the first pause after a temporary error; then doubling, with jitter,
RETRY_MAX_DELAY = 5.0      # up to this


def _now() -> str:
    return format_time(datetime.now(UTC).timestamp())


class NoContainer:
    """The controller of a task whose container does not exist (and is not made here: only at
    PREPARING does the runner ask the executor for one). Stopping it has nothing to do."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    def _gone(self) -> ExecutorError:
        return ExecutorError(f"task: the container of task {self.task_id} does not exist")

    async def prepare(self) -> None:
        raise self._gone()

    async def start(self) -> None:
        raise self._gone()

    async def wait(self) -> ExitStatus:
        raise self._gone()

    async def shutdown(self, grace: float | None = None) -> None:
        return None

    async def terminate(self) -> None:
        return None

    async def remove(self) -> None:
        return None

    async def state(self) -> ContainerState:
        return ContainerState("absent")


class TaskRunner:
    def __init__(self, task: Task, executor: TaskExecutor, report: Report, *,
                 retry_delay: float = RETRY_DELAY) -> None:
        self.task = task.copy()      # its status is the runner's own from here on
        self._executor = executor
        self._report = report
        self._changed = asyncio.Event()
        self._ctl: Controller | None = None
        self._retry = Backoff(retry_delay, RETRY_MAX_DELAY)
        self.removed = False

    @property
    def task_id(self) -> str:
        return self.task.id

    @property
    def status(self) -> TaskStatus:
        return self.task.status

    def update(self, task: Task) -> None:
        """A newer assignment of this task (e.g. a raised desired state)."""
        newer = task.copy()
        newer.status = self.task.status
        self.task = newer
        self._changed.set()

    def unassign(self) -> None:
        """The task left this node's assignments: stop and remove its container."""
        self.removed = True
        self._changed.set()

    def _leaving(self) -> bool:
        return self.removed or self.task.desired_state >= TaskState.REMOVE

    async def run(self) -> None:
        try:
            self._ctl = self._executor.existing(self.task.id)
            while not self._leaving():
                step = await self._step()
                if step is not None:
                    await self._after(step)
            await self._remove()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in the runner: fail the task rather than the agent
            log.exception("task %s runner failed", self.task.id)
            if not self.status.state.is_terminal:
                self._apply(failure(self.status, ExecutorError(str(e)), "runner error"))

    # ---- one turn -------------------------------------------------------------------------------
    async def _step(self) -> Step | None:
        """One `do` on the task as it is now; None when a change of the task cut it short."""
        task = self.task
        if task.status.state == TaskState.PREPARING and self._ctl is None \
                and task.desired_state < TaskState.SHUTDOWN:
            try:
                self._ctl = await self._executor.controller(task, self._progress)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a missing image or secret: the task is rejected
                return failure(task.status, e, "preparing failed")
        ctl = self._ctl or NoContainer(task.id)
        if task.status.state != TaskState.RUNNING or task.desired_state >= TaskState.SHUTDOWN:
            return await do(task, ctl)
        # Waiting on the running container lasts until it exits: a change (a raised desired
        # state, the task unassigned) cancels the wait, which leaves the container alone.
        stepping = asyncio.ensure_future(do(task, ctl))
        changed = asyncio.ensure_future(self._wait_change())
        try:
            await asyncio.wait({stepping, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([stepping, changed])
        return None if stepping.cancelled() else stepping.result()

    async def _after(self, step: Step) -> None:
        self._apply(step)
        if step.outcome is Outcome.ADVANCED:
            self._retry.reset()
        elif step.outcome is Outcome.NOOP:
            await self._wait_change()
        else:
            delay = self._retry.next_delay()
            log.info("task %s: retrying in %.1fs: %s", self.task.id, delay, step.status.err)
            await self._wait_change(timeout=delay)

    def _apply(self, step: Step) -> None:
        """The step's status becomes the task's; reported when it says something new."""
        old, new = self.task.status, step.status
        self.task.status = new
        if (new.state, new.message, new.err, new.container_status) != \
                (old.state, old.message, old.err, old.container_status):
            self._report(self.task.id, replace(new))

    def _progress(self, message: str) -> None:
        """A progress line while the controller is made (image pull): reported as PREPARING."""
        status = self.task.status
        if status.state == TaskState.PREPARING:
            self._apply(Step(replace(status, message=message, timestamp=_now()), Outcome.ADVANCED))

    async def _wait_change(self, timeout: float | None = None) -> None:
        """Until the task changes (or `timeout` seconds pass)."""
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return
        self._changed.clear()

    # ---- leaving ------------------------------------------------------------------------------
    async def _remove(self) -> None:
        """Stop the container and report SHUTDOWN (stopped is what the cluster waits for), then
        remove the container; temporary errors are retried as in any step."""
        ctl = self._ctl or self._executor.existing(self.task.id) or NoContainer(self.task.id)
        leaving = self.task.copy()
        leaving.desired_state = TaskState.SHUTDOWN
        while True:
            step = await do(leaving, ctl)
            self._apply(step)
            leaving.status = self.task.status
            if step.outcome is Outcome.NOOP:
                break
            if step.outcome is Outcome.RETRY:
                await asyncio.sleep(self._retry.next_delay())
        while True:
            try:
                await ctl.remove()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not is_temporary(e):
                    log.warning("task %s: removing its container: %s", self.task.id, e)
                    return
                log.info("task %s: removing its container, will retry: %s", self.task.id, e)
                await asyncio.sleep(self._retry.next_delay())
