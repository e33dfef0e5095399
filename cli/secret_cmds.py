"""`shoal secret ...` (create, ls, inspect, rm), and the builder `shoal config` reuses.

Theory of operation: the data is read from a file or stdin (`-`), base64-encoded and sent to
`POST /<kind>s/create`; the daemon never returns a secret's data, so `inspect` shows metadata.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import click

from cli.client import DaemonClient
from cli.common import FilterQuery, console, fail, filter_option, remove_each, with_client
from cli.service_flags import FlagError, parse_key_values
from cli.task_format import columns


def _read_data(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as e:
        fail(f"cannot read {source}: {e.strerror}")
    raise AssertionError("unreachable")


def blob_group(kind: str) -> click.Group:
    """The command group for secrets (kind="secret") or configs (kind="config")."""
    table = f"/{kind}s"

    @click.group(name=kind, help=f"Manage {kind}s.")
    def group() -> None:
        pass

    @group.command(help=f"Create a {kind} from a file or stdin (-): NAME FILE|-")
    @click.argument("name")
    @click.argument("source")
    @click.option("--label", "-l", multiple=True, help=f"{kind.capitalize()} label (KEY=VALUE).")
    @click.pass_context
    def create(ctx: click.Context, name: str, source: str, label: tuple[str, ...]) -> None:
        try:
            labels = parse_key_values(label, "--label")
        except FlagError as e:
            fail(str(e))
        data = _read_data(source)
        body = {"Name": name, "Labels": labels, "Data": base64.b64encode(data).decode()}

        async def go(client: DaemonClient) -> Any:
            return await client.post(f"{table}/create", body)

        console.print(with_client(ctx, go)["ID"], markup=False)

    @group.command("ls", help=f"List {kind}s.")
    @click.option("--quiet", "-q", is_flag=True, help="Only display IDs.")
    @filter_option("--filter", "-f", help="Filter output (name=x, label=k=v).")
    @click.pass_context
    def ls(ctx: click.Context, quiet: bool, filters: FilterQuery | None) -> None:
        async def go(client: DaemonClient) -> Any:
            return await client.get(table, filters=filters)

        objs = sorted(with_client(ctx, go), key=lambda o: o["Spec"]["Name"])
        if quiet:
            for o in objs:
                console.print(o["ID"], markup=False)
            return
        rows = [[o["ID"][:25], o["Spec"]["Name"], ((o["Spec"].get("Driver") or {}).get("Name") or ""),
                 o.get("CreatedAt", ""), o.get("UpdatedAt", "")] for o in objs]
        headers = ("ID", "NAME", "DRIVER", "CREATED", "UPDATED") if kind == "secret" else \
            ("ID", "NAME", "CREATED", "UPDATED")
        if kind != "secret":
            rows = [[r[0], r[1], r[3], r[4]] for r in rows]
        console.print(columns(headers, rows), markup=False)

    @group.command(help=f"Show details of one or more {kind}s.")
    @click.argument("refs", nargs=-1, required=True)
    @click.pass_context
    def inspect(ctx: click.Context, refs: tuple[str, ...]) -> None:
        async def go(client: DaemonClient) -> Any:
            return [await client.get(f"{table}/{ref}") for ref in refs]

        console.print(json.dumps(with_client(ctx, go), indent=4), markup=False)

    @group.command(help=f"Remove one or more {kind}s.")
    @click.argument("refs", nargs=-1, required=True)
    @click.pass_context
    def rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
        remove_each(ctx, table, refs)

    return group


secret = blob_group("secret")
