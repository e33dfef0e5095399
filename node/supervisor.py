"""The daemon's supervisor: one TaskGroup that owns every background task.

Theory of operation: components are started in dependency order with `start(name, coro)`; they
all live in a single `asyncio.TaskGroup`, so a component that crashes brings the daemon down
instead of dying silently. `stop()` is the ordered, bounded shutdown: components are cancelled in
reverse start order, each given a share of the deadline; whatever is still running when the
deadline passes is abandoned to the TaskGroup's own cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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

    async def stop(self, grace: float) -> None:
        """Cancel components newest first, waiting for each within the remaining time."""
        deadline = time.monotonic() + grace
        for name, task in reversed(self._tasks):
            if task.done():
                continue
            task.cancel()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("shutdown deadline passed; abandoning %s", name)
                continue
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(task), remaining)
            if not task.done():
                log.warning("component %s did not stop in time", name)
        self._tasks.clear()
