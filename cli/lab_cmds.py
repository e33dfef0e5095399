"""`shoal lab up|ls|exec|down`: the local multi-host lab from the command line."""

from __future__ import annotations

import os

import click
from rich.table import Table

from cli.client import ClientError
from cli.common import console, fail
from cli.lab import Lab, LabError
from cli.lab.lab import list_labs
from cli.lab.net import NetError


def _lab(name: str) -> Lab:
    if os.geteuid() != 0:
        fail("shoal lab needs root (network namespaces)")
    try:
        return Lab(name)
    except LabError as e:
        fail(str(e))
    raise AssertionError("unreachable")


name_option = click.option("--name", default="shoal", show_default=True, envvar="SHOAL_LAB",
                           help="Lab name; everything the lab creates carries it.")


@click.group()
def lab() -> None:
    """A local multi-host lab: hosts as network namespaces, each running a shoal daemon."""


@lab.command()
@name_option
@click.option("--managers", default=1, show_default=True, type=click.IntRange(1, 9))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0, 70))
@click.option("--no-swarm", is_flag=True, help="Only start the daemons; do not form a swarm.")
@click.option("--demo/--no-demo", default=True, show_default=True,
              help="Load a busybox image on every host and run the `demo` web service.")
def up(name: str, managers: int, workers: int, no_swarm: bool, demo: bool) -> None:
    """Create the hosts, start a daemon on each, and form a swarm (manager-1 inits, the rest join)."""
    the_lab = _lab(name)
    try:
        nodes = the_lab.up(managers=managers, workers=workers, swarm=not no_swarm, demo=demo)
    except (LabError, NetError, ClientError) as e:
        fail(f"lab up failed: {e}")
    console.print(f"lab {name!r} is up with {len(nodes)} hosts:")
    _print_nodes(the_lab)
    if the_lab.demo_running:
        console.print(f"\nservice `demo` runs {the_lab.demo_running} replicas of busybox httpd, published on "
                      f"port 8080 of every host (routing mesh); see: "
                      f"shoal lab exec {nodes[0].name} -- shoal service ps demo")
        answer = the_lab.demo_answer
        if answer is not None:
            where = f"{answer.via}, which runs none of its tasks" if answer.idle else answer.via
            console.print(f"{answer.client} -> http://{answer.address}:8080/ ({where}) answered: {answer.body}",
                          markup=False)
    console.print(f"\nRun commands on a host with: shoal lab exec {nodes[0].name} -- shoal node ls")


@lab.command("ls")
@name_option
def ls(name: str) -> None:
    """List the lab's hosts."""
    the_lab = _lab(name)
    if not the_lab.nodes:
        others = [n for n in list_labs() if n != name]
        hint = f" (labs up: {', '.join(others)})" if others else ""
        console.print(f"lab {name!r} is not up{hint}")
        return
    _print_nodes(the_lab)


def _print_nodes(the_lab: Lab) -> None:
    table = Table(box=None, pad_edge=False)
    for col in ("NODE", "ADDRESS", "STATUS", "PID", "API"):
        table.add_column(col)
    for node in the_lab.nodes.values():
        table.add_row(node.name, node.address, the_lab.status(node.name), str(node.pid), node.host)
    console.print(table)


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@name_option
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside NODE's namespace, with SHOAL_HOST/DOCKER_HOST set to its daemon."""
    the_lab = _lab(name)
    try:
        argv = the_lab.exec_argv(node, list(command))
    except LabError as e:
        fail(str(e))
    os.execvp(argv[0], argv)


@lab.command()
@name_option
def down(name: str) -> None:
    """Stop every daemon and remove every namespace, mount and directory of the lab."""
    _lab(name).down()
    console.print(f"lab {name!r} is down")
