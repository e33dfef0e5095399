"""The daemon's supervisor: one TaskGroup that owns every background task.

Theory of operation: components are started in dependency order with `start(name, coro)`; they
all live in a single `asyncio.TaskGroup`, so a component that crashes brings the daemon down
instead of dying silently. `stop()` is the ordered, bounded shutdown: components are cancelled in
reverse start order, all within one deadline; whatever is still running when the
deadline passes is abandoned to the TaskGroup's own cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("shoal.supervisor")


class Supervisor:
    def __init__(self, group: asyncio.TaskGroup) -> None:
        self._group = group
        self._tasks: list[tuple[str, asyncio.Task[Any]]] = []

    def start(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self._group.create_task(coro, name=name)
        self._tasks.append((name, task))
        return task

    async def stop(self, deadline: float) -> None:
        """Cancel components newest first, each waited for until `deadline` (event-loop time);
        what is still running then is abandoned to the TaskGroup's own cancellation."""
        loop = asyncio.get_running_loop()
        for name, task in reversed(self._tasks):
            if task.done():
                continue
            task.cancel()
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("shutdown deadline passed; abandoning %s", name)
                continue
            await asyncio.wait({task}, timeout=remaining)   # never raises; our own cancellation propagates
            if not task.done():
                log.warning("component %s did not stop in time", name)
        self._tasks.clear()
