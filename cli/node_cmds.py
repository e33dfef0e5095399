"""`shoal node ls|inspect|update|promote|demote|rm|ps`."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from cli.client import DaemonClient
from cli.common import FilterQuery, console, fail, filter_option, with_client


@click.group()
def node() -> None:
    """Manage swarm nodes."""


def _manager_status(n: dict[str, Any]) -> str:
    status = n.get("ManagerStatus")
    if not status:
        return ""
    if status.get("Leader"):
        return "Leader"
    return str(status.get("Reachability", "")).capitalize()


@node.command("ls")
@click.option("-q", "--quiet", is_flag=True)
@filter_option("-f", "--filter", help="key=value (id, name, label, role, node.label)")
@click.pass_context
def ls(ctx: click.Context, quiet: bool, filters: FilterQuery | None) -> None:
    """List nodes; * marks this node."""

    async def go(c: DaemonClient) -> tuple[list[dict[str, Any]], str]:
        nodes = await c.get("/nodes", filters=filters)
        info = await c.get("/info")
        return nodes, info["Swarm"]["NodeID"]

    nodes, self_id = with_client(ctx, go)
    nodes.sort(key=lambda n: n["Description"].get("Hostname", ""))
    if quiet:
        for n in nodes:
            console.print(n["ID"])
        return
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"):
        table.add_column(col)
    for n in nodes:
        table.add_row(n["ID"] + (" *" if n["ID"] == self_id else ""), n["Description"].get("Hostname", ""),
                      n["Status"]["State"].capitalize(), n["Spec"].get("Availability", "").capitalize(),
                      _manager_status(n), (n["Description"].get("Engine") or {}).get("EngineVersion", ""))
    console.print(table)


async def _resolve(c: DaemonClient, ref: str) -> dict[str, Any]:
    if ref == "self":
        ref = (await c.get("/info"))["Swarm"]["NodeID"]
    result: dict[str, Any] = await c.get(f"/nodes/{ref}")
    return result


@node.command()
@click.option("--pretty", is_flag=True)
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, pretty: bool, refs: tuple[str, ...]) -> None:
    """Show nodes in detail (`self` is this node)."""

    async def go(c: DaemonClient) -> list[dict[str, Any]]:
        return [await _resolve(c, r) for r in refs]

    nodes = with_client(ctx, go)
    if not pretty:
        console.print_json(json.dumps(nodes))
        return
    for n in nodes:
        desc, spec = n["Description"], n["Spec"]
        console.print(f"ID:\t\t\t{n['ID']}", markup=False)
        console.print(f"Hostname:\t\t{desc.get('Hostname', '')}", markup=False)
        console.print(f"Joined at:\t\t{n.get('CreatedAt', '')}", markup=False)
        console.print("Status:", markup=False)
        console.print(f" State:\t\t\t{n['Status']['State'].capitalize()}", markup=False)
        console.print(f" Availability:\t\t{spec.get('Availability', '').capitalize()}", markup=False)
        console.print(f" Address:\t\t{n['Status'].get('Addr', '')}", markup=False)
        if n.get("ManagerStatus"):
            console.print("Manager Status:", markup=False)
            console.print(f" Address:\t\t{n['ManagerStatus'].get('Addr', '')}", markup=False)
            console.print(f" Raft Status:\t\t{_manager_status(n)}", markup=False)
            console.print(f" Leader:\t\t{'Yes' if n['ManagerStatus'].get('Leader') else 'No'}", markup=False)
        if spec.get("Labels"):
            console.print("Labels:", markup=False)
            for k, v in sorted(spec["Labels"].items()):
                console.print(f" - {k}={v}", markup=False)
        platform, resources = desc.get("Platform") or {}, desc.get("Resources") or {}
        console.print(f"Platform:\n Operating System:\t{platform.get('OS', '')}\n"
                      f" Architecture:\t\t{platform.get('Architecture', '')}", markup=False)
        console.print(f"Resources:\n CPUs:\t\t\t{resources.get('NanoCPUs', 0) // 1_000_000_000}\n"
                      f" Memory:\t\t{resources.get('MemoryBytes', 0) / 2**30:.2f}GiB", markup=False)
        console.print(f"Engine Version:\t\t{(desc.get('Engine') or {}).get('EngineVersion', '')}", markup=False)


async def _update(c: DaemonClient, ref: str, change: Any) -> dict[str, Any]:
    n = await _resolve(c, ref)
    spec = dict(n["Spec"])
    spec["Labels"] = dict(spec.get("Labels") or {})
    change(spec)
    await c.post(f"/nodes/{n['ID']}/update", spec, version=n["Version"]["Index"])
    return n


@node.command()
@click.option("--availability", type=click.Choice(["active", "pause", "drain"]))
@click.option("--role", type=click.Choice(["worker", "manager"]))
@click.option("--label-add", multiple=True, help="key=value")
@click.option("--label-rm", multiple=True, help="key")
@click.argument("ref")
@click.pass_context
def update(ctx: click.Context, availability: str | None, role: str | None, label_add: tuple[str, ...],
           label_rm: tuple[str, ...], ref: str) -> None:
    """Change a node's availability, role or labels."""

    def change(spec: dict[str, Any]) -> None:
        if availability:
            spec["Availability"] = availability
        if role:
            spec["Role"] = role
        for item in label_add:
            key, _, value = item.partition("=")
            if not key:
                fail(f"invalid label {item!r}: expected key=value")
            spec["Labels"][key] = value
        for key in label_rm:
            if key not in spec["Labels"]:
                fail(f"key {key} doesn't exist in node's labels")
            del spec["Labels"][key]

    async def go(c: DaemonClient) -> None:
        await _update(c, ref, change)

    with_client(ctx, go)
    console.print(ref)


def _set_role(ctx: click.Context, refs: tuple[str, ...], role: str) -> None:
    async def go(c: DaemonClient) -> list[str]:
        lines = []
        for ref in refs:
            n = await _resolve(c, ref)
            if n["Spec"].get("Role") == role:
                lines.append(f"Node {ref} is already a {role}.")
                continue
            await _update(c, ref, lambda spec: spec.__setitem__("Role", role))
            lines.append(f"Node {ref} promoted to a manager in the swarm." if role == "manager"
                         else f"Manager {ref} demoted in the swarm.")
        return lines

    for line in with_client(ctx, go):
        console.print(line, markup=False)


@node.command()
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def promote(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Make nodes managers."""
    _set_role(ctx, refs, "manager")


@node.command()
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def demote(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Make managers workers."""
    _set_role(ctx, refs, "worker")


@node.command("rm")
@click.option("-f", "--force", is_flag=True)
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, refs: tuple[str, ...]) -> None:
    """Remove nodes from the swarm."""

    async def go(c: DaemonClient) -> None:
        for ref in refs:
            await c.delete(f"/nodes/{ref}", force=force)
            console.print(ref, markup=False)

    with_client(ctx, go)
