"""Time for the control loops: a clock object with `now()` and `async sleep(seconds)`.

`SystemClock` is the real one; `ManualClock` is virtual time for tests: `sleep` returns only
when `advance()` has moved the clock past the sleeper's deadline, so no test ever waits for
real time to pass.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    def __init__(self, start: float = 1_795_000_000.0) -> None:
        self._now = start
        self._moved = asyncio.Condition()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + max(0.0, seconds)
        async with self._moved:
            await self._moved.wait_for(lambda: self._now >= deadline)

    async def advance(self, seconds: float) -> None:
        """Move time forward and let every sleeper that is now due run."""
        self._now += seconds
        async with self._moved:
            self._moved.notify_all()
        for _ in range(3):
            await asyncio.sleep(0)
