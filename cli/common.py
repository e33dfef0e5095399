"""What every CLI command shares: the daemon address, running a coroutine, one-line errors."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import click
from rich.console import Console

from cli.client import ClientError, DaemonClient

T = TypeVar("T")

# Output that is not a terminal (pipes, tests, scripts) is never wrapped or truncated.
_WIDTH = None if sys.stdout.isatty() else 400
console = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 400)


def fail(message: str, code: int = 1) -> None:
    """Print one line to stderr and exit: how every CLI error ends."""
    err_console.print(message, markup=False)
    sys.exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ClientError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    raise AssertionError("unreachable")


def host_of(ctx: click.Context) -> str | None:
    obj = ctx.find_root().obj or {}
    return obj.get("host")


def with_client(ctx: click.Context, fn: Callable[[DaemonClient], Awaitable[T]]) -> T:
    """Open a client to the selected daemon, run `fn` with it, report errors as one line."""

    async def go() -> T:
        async with DaemonClient(host_of(ctx)) as client:
            return await fn(client)

    return run(go())
