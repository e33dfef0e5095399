"""Polling with a deadline: how tests wait for a condition, instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Call `check` until it returns a truthy value; raise AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    last = check()
    while not last:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = check()
    return last


async def async_wait_until(check: Callable[[], Awaitable[T | None]], timeout: float = 10.0,
                           interval: float = 0.05, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last = await check()
    while not last:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)
        last = await check()
    return last


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
