"""A root command for CLI tests: the `shoal` root options plus the service, secret, config and
network groups (run as `python -m tests.api.cli_entry -H unix://... service ls`)."""

from __future__ import annotations

import click

from cli.config_cmds import config
from cli.network_cmds import network
from cli.secret_cmds import secret
from cli.service_cmds import service


@click.group()
@click.option("-H", "--host", default=None)
@click.pass_context
def root(ctx: click.Context, host: str | None) -> None:
    ctx.obj = {"host": host}


for group in (service, secret, config, network):
    root.add_command(group)

if __name__ == "__main__":
    root()
