"""A TaskExecutor that reports how long each container start takes (the daemon's metrics).

It wraps another executor's controllers and times only `start` (the container's process
created and running); every other step goes straight through, so the executor contract holds
unchanged. The observer is a plain callable: the worker knows nothing of Prometheus.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from model import Task
from worker.exec import ContainerState, Controller, ExitStatus, TaskExecutor


class TimedController:
    def __init__(self, inner: Controller, observe: Callable[[float], None]) -> None:
        self._inner = inner
        self._observe = observe

    async def prepare(self) -> None:
        await self._inner.prepare()

    async def start(self) -> None:
        began = time.perf_counter()
        await self._inner.start()
        self._observe(time.perf_counter() - began)

    async def wait(self) -> ExitStatus:
        return await self._inner.wait()

    async def shutdown(self, grace: float | None = None) -> None:
        await self._inner.shutdown(grace)

    async def terminate(self) -> None:
        await self._inner.terminate()

    async def remove(self) -> None:
        await self._inner.remove()

    async def state(self) -> ContainerState:
        return await self._inner.state()


class TimedTaskExecutor:
    def __init__(self, inner: TaskExecutor, observe: Callable[[float], None]) -> None:
        self._inner = inner
        self._observe = observe

    async def controller(self, task: Task, progress: Callable[[str], None]) -> Controller:
        return TimedController(await self._inner.controller(task, progress), self._observe)

    def existing(self, task_id: str) -> Controller | None:
        found = self._inner.existing(task_id)
        return TimedController(found, self._observe) if found is not None else None
