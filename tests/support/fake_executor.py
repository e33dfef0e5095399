"""An in-memory executor behind the TaskExecutor/Controller contract of `worker.exec` (unit tests).

A `FakeController` records its calls (but not `wait` and `state`) and keeps a container status
(absent → created → running → stopped → removed) the way the runc controller does: each method
is idempotent. `fail[method]` holds errors that the next calls of that method raise, one per
call, before doing anything; `finish(code)` makes the container exit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from model import Task
from worker.exec import ContainerState, ExitStatus


@dataclass
class FakeController:
    task_id: str
    calls: list[str] = field(default_factory=list)
    status: str = "absent"
    exit: ExitStatus | None = None
    fail: dict[str, list[Exception]] = field(default_factory=dict)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: asyncio.Event = field(default_factory=asyncio.Event)     # set once `wait` blocks

    def _call(self, method: str, record: bool = True) -> None:
        if record:
            self.calls.append(method)
        errors = self.fail.get(method)
        if errors:
            raise errors.pop(0)

    async def prepare(self) -> None:
        self._call("prepare")
        if self.status == "absent":
            self.status = "created"

    async def start(self) -> None:
        self._call("start")
        if self.status == "absent":
            raise RuntimeError(f"container {self.task_id} is not prepared")
        if self.status == "created":
            self.status = "running"

    async def wait(self) -> ExitStatus:
        self._call("wait", record=False)     # an observation, as `state` is: not in `calls`
        self.waiting.set()
        await self.exited.wait()
        assert self.exit is not None
        return self.exit

    def finish(self, code: int) -> None:
        self.status, self.exit = "stopped", ExitStatus(code)
        self.exited.set()

    async def shutdown(self, grace: float | None = None) -> None:
        self._call("shutdown")
        if self.status in ("created", "running"):
            self.finish(143 if self.status == "running" else 137)

    async def terminate(self) -> None:
        self._call("terminate")
        if self.status in ("created", "running"):
            self.finish(137)

    async def remove(self) -> None:
        self._call("remove")
        if self.status in ("created", "running"):
            self.finish(137)
        self.status = "removed"

    async def state(self) -> ContainerState:
        if self.status in ("absent", "removed"):
            return ContainerState("absent")
        if self.status == "created":
            return ContainerState("created")
        if self.status == "running":
            return ContainerState("running", 4242)
        return ContainerState("stopped", 0, exit=self.exit)


class FakeExecutor:
    def __init__(self) -> None:
        self.controllers: dict[str, FakeController] = {}
        self.fail_prepare: dict[str, str] = {}          # task ID → a fatal prepare error
        self.fail_controller: dict[str, list[Exception]] = {}   # task ID → errors of controller()

    async def controller(self, task: Task, progress: Callable[[str], None]) -> FakeController:
        errors = self.fail_controller.get(task.id)
        if errors:
            raise errors.pop(0)
        progress("pulling image")
        ctl = self.controllers.get(task.id)
        if ctl is None:
            fail: dict[str, list[Exception]] = {}
            if task.id in self.fail_prepare:
                fail["prepare"] = [RuntimeError(self.fail_prepare[task.id])]
            ctl = self.controllers[task.id] = FakeController(task.id, fail=fail)
        return ctl

    def existing(self, task_id: str) -> FakeController | None:
        ctl = self.controllers.get(task_id)
        return ctl if ctl is not None and ctl.status not in ("absent", "removed") else None
