"""What every CLI command shares: the daemon address, running a coroutine, one-line errors, and
the `--filter KEY=VALUE` option."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import click
from rich.console import Console

from cli.client import ApiResponseError, ClientError, DaemonClient

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# The Engine API `filters` value in the docker CLI's map form: {"KEY": {"VALUE": true}}.
FilterQuery = dict[str, dict[str, bool]]

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


def remove_each(ctx: click.Context, collection: str, refs: tuple[str, ...]) -> None:
    """`DELETE <collection>/<ref>` for each ref, as docker's `rm` commands do: print each removed
    ref, print each failure as one line, go on, and exit 1 if any failed."""

    async def go(client: DaemonClient) -> bool:
        ok = True
        for ref in refs:
            try:
                await client.delete(f"{collection}/{ref}")
                console.print(ref, markup=False)
            except ApiResponseError as e:
                err_console.print(str(e), markup=False)
                ok = False
        return ok

    if not with_client(ctx, go):
        raise SystemExit(1)


def filter_query(items: Iterable[str]) -> FilterQuery | None:
    """`--filter KEY=VALUE` items as the `filters` query value (None when there are none).

    As the docker CLI reads them: an empty item is skipped, the key is trimmed and lower-cased,
    the value trimmed, repeated keys collect values. An item without `=` (or with no key) is a
    usage error: click prints it on one line and exits 2."""
    out: FilterQuery = {}
    for item in items:
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise click.BadParameter(f"bad format of filter (expected name=value): {item!r}")
        out.setdefault(key, {})[value.strip()] = True
    return out or None


def with_filter(query: FilterQuery | None, key: str, *values: str) -> FilterQuery:
    """A copy of `query` with `values` added to the set of `key` (what a command adds itself)."""
    out = {k: dict(v) for k, v in (query or {}).items()}
    for value in values:
        out.setdefault(key, {})[value] = True
    return out


def filter_option(*decls: str, help: str) -> Callable[[F], F]:
    """The repeatable `--filter` option (declared as `decls`, e.g. "-f", "--filter"), handed to
    the command as its `filters` argument, already a `FilterQuery | None`."""

    def parse(_ctx: click.Context, _param: click.Parameter, items: tuple[str, ...]) -> FilterQuery | None:
        return filter_query(items)

    return click.option(*decls, "filters", multiple=True, callback=parse, help=help)
