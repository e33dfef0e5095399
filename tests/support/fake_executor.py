"""An in-memory executor behind the agent's TaskExecutor/Controller protocols (unit tests only)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from model import Task


@dataclass
class FakeExit:
    exit_code: int
    oom_killed: bool = False

    @property
    def failed(self) -> bool:
        return self.exit_code != 0 or self.oom_killed

    @property
    def message(self) -> str:
        return f"task: non-zero exit ({self.exit_code})" if self.failed else ""


@dataclass
class FakeState:
    status: str
    pid: int = 0
    exit: FakeExit | None = None


@dataclass
class FakeController:
    task_id: str
    calls: list[str] = field(default_factory=list)
    status: str = "absent"
    exit: FakeExit | None = None
    fail_prepare: str = ""
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    async def prepare(self) -> None:
        self.calls.append("prepare")
        if self.fail_prepare:
            raise RuntimeError(self.fail_prepare)
        if self.status == "absent":
            self.status = "created"

    async def start(self) -> None:
        self.calls.append("start")
        if self.status == "created":
            self.status = "running"

    async def wait(self) -> FakeExit:
        await self.exited.wait()
        assert self.exit is not None
        return self.exit

    def finish(self, code: int) -> None:
        self.status, self.exit = "stopped", FakeExit(code)
        self.exited.set()

    async def shutdown(self, grace: float | None = None) -> None:
        self.calls.append("shutdown")
        if self.status == "running":
            self.finish(143)

    async def terminate(self) -> None:
        self.calls.append("terminate")
        if self.status == "running":
            self.finish(137)

    async def remove(self) -> None:
        self.calls.append("remove")
        self.status = "removed"

    async def state(self) -> FakeState:
        return FakeState(self.status, 4242 if self.status == "running" else 0, self.exit)


class FakeExecutor:
    def __init__(self) -> None:
        self.controllers: dict[str, FakeController] = {}
        self.fail_prepare: dict[str, str] = {}

    async def controller(self, task: Task, progress: Callable[[str], None]) -> FakeController:
        progress("pulling image")
        ctl = FakeController(task.id, fail_prepare=self.fail_prepare.get(task.id, ""))
        self.controllers[task.id] = ctl
        return ctl

    def existing(self, task_id: str) -> FakeController | None:
        ctl = self.controllers.get(task_id)
        return ctl if ctl is not None and ctl.status not in ("absent", "removed") else None
