"""`shoal volume create|ls|inspect|rm|prune`: local volumes of the daemon, via the Engine API."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click
from rich.table import Table

from cli.client import DaemonClient
from cli.common import FilterQuery, console, fail, filter_option, with_client, with_filter


def _key_values(items: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            fail(f"invalid {what} {item!r}: expected KEY=VALUE")
        out[key] = value if eq else ""
    return out


@click.group()
def volume() -> None:
    """Manage local volumes."""


@volume.command()
@click.argument("name", required=False, default="")
@click.option("-d", "--driver", default="local", show_default=True, help="Volume driver.")
@click.option("--label", "labels", multiple=True, help="Set metadata (KEY=VALUE).")
@click.option("-o", "--opt", "opts", multiple=True, help="Driver options (KEY=VALUE).")
@click.pass_context
def create(ctx: click.Context, name: str, driver: str, labels: tuple[str, ...],
           opts: tuple[str, ...]) -> None:
    """Create a volume (an anonymous one when NAME is left out)."""
    body = {"Name": name, "Driver": driver, "Labels": _key_values(labels, "label"),
            "DriverOpts": _key_values(opts, "option")}

    async def go(c: DaemonClient) -> Any:
        return await c.post("/volumes/create", body)

    console.print(with_client(ctx, go)["Name"], markup=False)


@volume.command("ls")
@filter_option("-f", "--filter", help="Filter (name=, label=, dangling=, driver=).")
@click.option("-q", "--quiet", is_flag=True, help="Only names.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def ls(ctx: click.Context, filters: FilterQuery | None, quiet: bool, fmt: str) -> None:
    """List volumes."""

    async def go(c: DaemonClient) -> Any:
        return await c.get("/volumes", filters=filters)

    vols = with_client(ctx, go).get("Volumes") or []
    if quiet:
        for v in vols:
            console.print(v["Name"], markup=False)
        return
    if fmt == "json":
        console.print_json(json.dumps(vols))
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("DRIVER")
    table.add_column("VOLUME NAME")
    for v in vols:
        table.add_row(v["Driver"], v["Name"])
    console.print(table)


@volume.command()
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Show volumes in detail (JSON)."""

    async def go(c: DaemonClient) -> Any:
        return [await c.get(f"/volumes/{quote(n, safe='')}") for n in names]

    console.print_json(json.dumps(with_client(ctx, go)))


@volume.command()
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Do not complain about missing volumes.")
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...], force: bool) -> None:
    """Remove volumes (refused for a volume in use)."""

    async def go(c: DaemonClient) -> list[str]:
        removed = []
        for n in names:
            await c.delete(f"/volumes/{quote(n, safe='')}", force=force)
            removed.append(n)
        return removed

    for n in with_client(ctx, go):
        console.print(n, markup=False)


@volume.command()
@click.option("-a", "--all", "all_volumes", is_flag=True,
              help="Remove all unused volumes, not only anonymous ones.")
@filter_option("--filter", help="Filter (label=...).")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.pass_context
def prune(ctx: click.Context, all_volumes: bool, filters: FilterQuery | None, force: bool) -> None:
    """Remove unused volumes."""
    if not force:
        what = "all volumes not used by at least one container" if all_volumes \
            else "all anonymous volumes not used by at least one container"
        click.confirm(f"WARNING! This will remove {what}.\nAre you sure you want to continue?",
                      abort=True)
    query = with_filter(filters, "all", "true") if all_volumes else filters

    async def go(c: DaemonClient) -> Any:
        return await c.post("/volumes/prune", filters=query)

    report = with_client(ctx, go)
    deleted = report.get("VolumesDeleted") or []
    if deleted:
        console.print("Deleted Volumes:")
        for n in deleted:
            console.print(n, markup=False)
        console.print()
    console.print(f"Total reclaimed space: {report.get('SpaceReclaimed', 0)}B")
