"""`shoal network ...`: create, ls, inspect, rm of swarm (overlay) networks.

Only the network objects: the daemon's allocator picks a subnet when none is given, and the
overlay data plane follows from the store.
"""

from __future__ import annotations

import json
from typing import Any

import click

from cli.client import DaemonClient
from cli.common import FilterQuery, console, fail, filter_option, remove_each, with_client
from cli.service_flags import FlagError, parse_key_values
from cli.task_format import columns


@click.group()
def network() -> None:
    """Manage networks."""


@network.command()
@click.argument("name")
@click.option("--driver", "-d", default="overlay", show_default=True, help="Network driver.")
@click.option("--subnet", multiple=True, help="Subnet in CIDR form (e.g. 10.9.0.0/24).")
@click.option("--gateway", multiple=True, help="Gateway of the subnet, in the same order.")
@click.option("--attachable", is_flag=True, help="Let standalone containers attach.")
@click.option("--internal", is_flag=True, help="Restrict external access.")
@click.option("--label", multiple=True, help="Network label (KEY=VALUE).")
@click.option("--opt", "-o", multiple=True, help="Driver option (KEY=VALUE).")
@click.pass_context
def create(ctx: click.Context, name: str, driver: str, subnet: tuple[str, ...], gateway: tuple[str, ...],
           attachable: bool, internal: bool, label: tuple[str, ...], opt: tuple[str, ...]) -> None:
    """Create a network."""
    if len(gateway) > len(subnet):
        fail("every --gateway needs a --subnet")
    try:
        labels, options = parse_key_values(label, "--label"), parse_key_values(opt, "--opt")
    except FlagError as e:
        fail(str(e))
    config: list[dict[str, Any]] = []
    for i, cidr in enumerate(subnet):
        entry = {"Subnet": cidr}
        if i < len(gateway):
            entry["Gateway"] = gateway[i]
        config.append(entry)
    body = {"Name": name, "Driver": driver, "Attachable": attachable, "Internal": internal, "Labels": labels,
            "Options": options, "IPAM": {"Driver": "default", "Options": {}, "Config": config}}

    async def go(client: DaemonClient) -> Any:
        return await client.post("/networks/create", body)

    console.print(with_client(ctx, go)["Id"], markup=False)


@network.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="Only display IDs.")
@filter_option("--filter", "-f", help="Filter output (name=x, label=k=v, driver=overlay).")
@click.pass_context
def ls(ctx: click.Context, quiet: bool, filters: FilterQuery | None) -> None:
    """List networks."""

    async def go(client: DaemonClient) -> Any:
        return await client.get("/networks", filters=filters)

    nets = sorted(with_client(ctx, go), key=lambda n: n["Name"])
    if quiet:
        for n in nets:
            console.print(n["Id"], markup=False)
        return
    rows = [[n["Id"][:12], n["Name"], n["Driver"], n["Scope"]] for n in nets]
    console.print(columns(("NETWORK ID", "NAME", "DRIVER", "SCOPE"), rows), markup=False)


@network.command()
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Show details of one or more networks."""

    async def go(client: DaemonClient) -> Any:
        return [await client.get(f"/networks/{ref}") for ref in refs]

    console.print(json.dumps(with_client(ctx, go), indent=4), markup=False)


@network.command()
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove one or more networks."""
    remove_each(ctx, "/networks", refs)
