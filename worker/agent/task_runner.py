"""One task's lifecycle on a worker, driven through the executor's Controller protocol.

Theory of operation: the runner holds the latest assignment of its task (the manager may raise
its desired state at any time) and the task's observed state, which only moves forward. Each
loop turn makes one transition: ACCEPTED → PREPARING (pull, prepare) → READY → STARTING →
RUNNING → COMPLETE/FAILED, or → SHUTDOWN when the desired state says so. A fatal error before
STARTING rejects the task; after it, the task fails. Every status is handed to `report`, which
delivers it to the dispatcher. An existing container (live restore) is picked up where it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from model import Task, TaskState, TaskStatus, format_time

log = logging.getLogger("shoal.agent.task")

Report = Callable[[str, TaskStatus], None]


class ExitInfo(Protocol):
    exit_code: int
    oom_killed: bool

    @property
    def failed(self) -> bool: ...

    @property
    def message(self) -> str: ...


class TaskController(Protocol):
    """The Controller protocol (worker.executor.controller) plus what live restore needs."""

    async def prepare(self) -> None: ...
    async def start(self) -> None: ...
    async def wait(self) -> Any: ...
    async def shutdown(self, grace: float | None = None) -> None: ...
    async def terminate(self) -> None: ...
    async def remove(self) -> None: ...
    async def state(self) -> Any: ...


class TaskExecutor(Protocol):
    async def controller(self, task: Task, progress: Callable[[str], None]) -> TaskController:
        """A controller for the task; may pull its image first (reporting progress)."""
        ...

    def existing(self, task_id: str) -> TaskController | None:
        """The controller of a container made for this task earlier (live restore), if any."""
        ...


def _now() -> str:
    return format_time(datetime.now(UTC).timestamp())


class TaskRunner:
    def __init__(self, task: Task, executor: TaskExecutor, report: Report) -> None:
        self.task = task
        self.status = TaskStatus(task.status.state, task.status.timestamp, task.status.message,
                                 task.status.err, task.status.container_status)
        self._executor = executor
        self._report = report
        self._changed = asyncio.Event()
        self._ctl: TaskController | None = None
        self.removed = False

    @property
    def task_id(self) -> str:
        return self.task.id

    def update(self, task: Task) -> None:
        """A newer assignment of this task (e.g. a raised desired state)."""
        self.task = task
        self._changed.set()

    def unassign(self) -> None:
        """The task left this node's assignments: stop and remove its container."""
        self.removed = True
        self._changed.set()

    def _set(self, state: TaskState, message: str, err: str = "",
             container_status: dict[str, Any] | None = None) -> None:
        if state < self.status.state:
            return
        self.status.advance(state, _now(), message, err)
        if container_status is not None:
            self.status.container_status = container_status
        self._report(self.task.id, TaskStatus(self.status.state, self.status.timestamp, message, err,
                                              self.status.container_status))

    async def _wait_change(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    async def run(self) -> None:
        try:
            await self._adopt_existing()
            while not await self._step():
                pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in a step: fail the task rather than the agent
            log.exception("task %s runner failed", self.task.id)
            terminal = TaskState.FAILED if self.status.state >= TaskState.STARTING else TaskState.REJECTED
            self._set(terminal, "runner error", str(e))

    async def _adopt_existing(self) -> None:
        ctl = self._executor.existing(self.task.id)
        if ctl is None:
            return
        self._ctl = ctl
        state = await ctl.state()
        if state.status == "running":
            if self.status.state < TaskState.RUNNING:
                self._set(TaskState.RUNNING, "started", container_status={"ContainerID": self.task.id,
                                                                          "PID": state.pid})
        elif state.status == "created" and self.status.state < TaskState.READY:
            self._set(TaskState.READY, "prepared")
        elif state.status == "stopped" and state.exit is not None and self.status.state <= TaskState.RUNNING:
            self._finish(state.exit)

    async def _step(self) -> bool:
        """Make one transition. True when the runner is done for good."""
        state, desired = self.status.state, self.task.desired_state
        if self.removed or desired >= TaskState.REMOVE:
            await self._teardown(remove=True)
            return True
        if state.is_terminal:
            await self._wait_change()
            return False
        if desired >= TaskState.SHUTDOWN:
            await self._teardown(remove=False)
            return False
        if state < TaskState.ACCEPTED:
            self._set(TaskState.ACCEPTED, "accepted")
        elif state < TaskState.READY:
            await self._prepare()
        elif state == TaskState.READY:
            if desired >= TaskState.RUNNING:
                await self._start()
            else:
                await self._wait_change()
        elif state < TaskState.RUNNING:  # STARTING after a restart: it either started or not
            await self._start()
        else:
            await self._wait_running()
        return False

    async def _prepare(self) -> None:
        self._set(TaskState.PREPARING, "preparing")
        try:
            if self._ctl is None:
                self._ctl = await self._executor.controller(
                    self.task, lambda msg: self._set(TaskState.PREPARING, msg))
            await self._ctl.prepare()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._set(TaskState.REJECTED, "preparing failed", str(e))
            return
        self._set(TaskState.READY, "prepared")

    async def _start(self) -> None:
        assert self._ctl is not None
        self._set(TaskState.STARTING, "starting")
        try:
            await self._ctl.start()
            state = await self._ctl.state()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._set(TaskState.FAILED, "starting failed", str(e))
            return
        self._set(TaskState.RUNNING, "started", container_status={"ContainerID": self.task.id,
                                                                  "PID": getattr(state, "pid", 0)})

    async def _wait_running(self) -> None:
        assert self._ctl is not None
        exit_wait = asyncio.ensure_future(self._ctl.wait())
        change = asyncio.ensure_future(self._wait_change())
        try:
            done, _ = await asyncio.wait({exit_wait, change}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (exit_wait, change):
                if not fut.done():
                    fut.cancel()
            await asyncio.gather(exit_wait, change, return_exceptions=True)
        if exit_wait in done:
            try:
                self._finish(exit_wait.result())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # e.g. the container became unhealthy
                self._set(TaskState.FAILED, "task failed", str(e))

    def _finish(self, exit_status: Any) -> None:
        container = {"ContainerID": self.task.id, "PID": 0, "ExitCode": int(exit_status.exit_code)}
        if exit_status.failed:
            self._set(TaskState.FAILED, "task failed", exit_status.message or
                      f"task: non-zero exit ({exit_status.exit_code})", container_status=container)
        else:
            self._set(TaskState.COMPLETE, "finished", container_status=container)

    async def _teardown(self, remove: bool) -> None:
        ctl = self._ctl or self._executor.existing(self.task.id)
        try:
            if ctl is not None:
                await ctl.shutdown()   # idempotent; also stops a container whose task already failed
            # Stopped is what the cluster waits for; removing the container's files comes after.
            if not self.status.state.is_terminal:
                self._set(TaskState.SHUTDOWN, "shutdown")
            if ctl is not None and remove:
                await ctl.remove()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("task %s teardown: %s", self.task.id, e)
            if not self.status.state.is_terminal:
                self._set(TaskState.SHUTDOWN, "shutdown")
