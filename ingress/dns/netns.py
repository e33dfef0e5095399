"""Doing one thing inside another network namespace without the daemon ever leaving its own.

`run_in_netns(fd, fn)` runs `fn` in a fresh thread that first joins the namespace open at `fd`
(setns affects only the calling thread, and the thread works on its own
duplicate of the fd) and then ends; the event loop waits for its result
without blocking. A socket keeps the namespace it was created in for its whole life, so the
daemon's loop can serve a socket made this way as if it were its own.

If the waiting caller is cancelled, the result still arrives later; `discard` is then called on
it in the loop (e.g. to close sockets), so nothing leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace open at `fd` (os.setns arrives in 3.12)."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str) -> int:
    """An fd on a network namespace (e.g. /run/netns/NAME or /proc/PID/ns/net)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


async def run_in_netns(netns_fd: int, fn: Callable[[], T], *,
                       discard: Callable[[T], None] | None = None) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            if error is None and discard is not None:
                discard(result)  # type: ignore[arg-type]
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    own_fd = os.dup(netns_fd)  # the caller may close its fd while the thread is starting

    def body() -> None:
        try:
            try:
                setns(own_fd)
            finally:
                os.close(own_fd)
            result = fn()
        except BaseException as exc:  # delivered to the awaiting caller
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(deliver, None, exc)
            return
        try:
            loop.call_soon_threadsafe(deliver, result, None)
        except RuntimeError:
            if discard is not None:
                discard(result)

    try:
        threading.Thread(target=body, name="shoal-netns", daemon=True).start()
    except BaseException:
        os.close(own_fd)
        raise
    return await future
