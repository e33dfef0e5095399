"""Cancel-and-wait for owned children, and a restart backoff."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> list[BaseException]:
    """Cancel every child, then wait until all have finished.

    A child's own CancelledError is its result, not an error. Other exceptions the children
    ended with are returned, for the caller to log. If the caller is cancelled while it waits,
    the cancellation propagates (the children were cancelled already)."""
    children = [t for t in tasks if t is not None]
    for child in children:
        child.cancel()
    if not children:
        return []
    results = await asyncio.gather(*children, return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]


class Backoff:
    """Exponential delays with jitter between restarts: `first`, doubling up to `ceiling`;
    `reset()` after a run that went well."""

    def __init__(self, first: float = 0.1, ceiling: float = 5.0, rng: random.Random | None = None) -> None:
        self.first = first
        self.ceiling = ceiling
        self._next = first
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = self._next * (0.5 + self._rng.random() / 2)
        self._next = min(self._next * 2, self.ceiling)
        return delay

    def reset(self) -> None:
        self._next = self.first
