"""The `shoal` command tree. Each group lives in its own module; this one wires them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.client import DaemonClient
from cli.common import console, fail, with_client
from engineapi.http import SERVER_VERSION


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-H", "--host", envvar="SHOAL_HOST", default=None,
              help="Daemon address: unix:///path or tcp://host:port (env SHOAL_HOST).")
@click.version_option(SERVER_VERSION, prog_name="shoal")
@click.pass_context
def shoal(ctx: click.Context, host: str | None) -> None:
    """shoal: a container orchestrator in the spirit of Docker swarm mode."""
    ctx.obj = {"host": host}


@shoal.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def version(ctx: click.Context, fmt: str) -> None:
    """Show the client and server versions."""

    async def go(c: DaemonClient) -> Any:
        return await c.get("/version")

    server = with_client(ctx, go)
    if fmt == "json":
        console.print_json(json.dumps({"Client": {"Version": SERVER_VERSION}, "Server": server}))
        return
    console.print(f"Client:\n Version:     {SERVER_VERSION}\n\nServer:")
    for key in ("Version", "ApiVersion", "MinAPIVersion", "Os", "Arch", "KernelVersion"):
        console.print(f" {key + ':':<14}{server.get(key, '')}")


@shoal.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def info(ctx: click.Context, fmt: str) -> None:
    """Show system-wide information, including the node's swarm state."""

    async def go(c: DaemonClient) -> Any:
        return await c.get("/info")

    body = with_client(ctx, go)
    if fmt == "json":
        console.print_json(json.dumps(body))
        return
    for key in ("Name", "ServerVersion", "OperatingSystem", "KernelVersion", "Architecture",
                "NCPU", "MemTotal", "DockerRootDir"):
        console.print(f"{key}: {body.get(key, '')}")
    swarm = body.get("Swarm") or {}
    console.print(f"Swarm: {swarm.get('LocalNodeState', 'inactive')}")
    if swarm.get("NodeID"):
        console.print(f" NodeID: {swarm['NodeID']}")
        console.print(f" Is Manager: {str(bool(swarm.get('ControlAvailable'))).lower()}")
        console.print(f" Node Address: {swarm.get('NodeAddr', '')}")
    if swarm.get("Error"):
        console.print(f" Error: {swarm['Error']}")


@shoal.command()
@click.option("--data-dir", envvar="SHOAL_DATA_DIR", default="/var/lib/shoal", show_default=True,
              type=click.Path(file_okay=False), help="State directory (env SHOAL_DATA_DIR).")
@click.option("--socket", "socket_path", envvar="SHOAL_SOCKET", default="/run/shoal/shoal.sock",
              show_default=True, help="Unix socket of the API (env SHOAL_SOCKET).")
@click.option("--tcp", envvar="SHOAL_TCP", default="", help="Also serve the API on HOST:PORT.")
@click.option("--tls-cert", envvar="SHOAL_TLS_CERT", default="", help="TLS certificate for --tcp.")
@click.option("--tls-key", envvar="SHOAL_TLS_KEY", default="", help="TLS key for --tcp.")
@click.option("--tls-ca", envvar="SHOAL_TLS_CA", default="",
              help="CA for client certificates on --tcp (mutual TLS).")
@click.option("--listen-addr", envvar="SHOAL_LISTEN_ADDR", default="0.0.0.0:2377", show_default=True,
              help="Cluster listen address (Raft, dispatcher, CA) (env SHOAL_LISTEN_ADDR).")
@click.option("--advertise-addr", envvar="SHOAL_ADVERTISE_ADDR", default="",
              help="Cluster address other nodes use to reach this one (env SHOAL_ADVERTISE_ADDR).")
@click.option("--hostname", envvar="SHOAL_HOSTNAME", default="",
              help="Name this node reports (env SHOAL_HOSTNAME; default: the kernel hostname).")
@click.option("--log-level", envvar="SHOAL_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--shutdown-timeout", default=10.0, show_default=True, type=float,
              help="Seconds the ordered shutdown may take.")
@click.option("--metrics-addr", envvar="SHOAL_METRICS_ADDR", default="",
              help="Serve Prometheus metrics on [HOST:]PORT at /metrics (a bare port binds 127.0.0.1).")
@click.option("--dashboard-addr", envvar="SHOAL_DASHBOARD_ADDR", default="",
              help="Serve the live read-only dashboard on [HOST:]PORT (a bare port binds 127.0.0.1).")
def daemon(data_dir: str, socket_path: str, tcp: str, tls_cert: str, tls_key: str, tls_ca: str,
           listen_addr: str, advertise_addr: str, hostname: str, log_level: str,
           shutdown_timeout: float, metrics_addr: str, dashboard_addr: str) -> None:
    """Run the shoal daemon for this host (as root)."""
    from cli import logs
    from node import daemon as daemon_mod

    if tcp and ":" not in tcp:
        fail(f"invalid --tcp {tcp!r}: expected HOST:PORT")
    if bool(tls_cert) != bool(tls_key):
        fail("--tls-cert and --tls-key go together")
    from node.metrics import AddressError, side_address

    try:
        for flag, value in (("--metrics-addr", metrics_addr), ("--dashboard-addr", dashboard_addr)):
            if value:
                side_address(value, flag)
    except AddressError as e:
        fail(str(e))
    logs.setup(log_level)
    config = daemon_mod.DaemonConfig(
        data_dir=Path(data_dir).absolute(), socket=Path(socket_path).absolute(),
        listen_addr=listen_addr, advertise_addr=advertise_addr, tcp=tcp, tls_cert=tls_cert,
        tls_key=tls_key, tls_ca=tls_ca, shutdown_timeout=shutdown_timeout, hostname=hostname,
        metrics_addr=metrics_addr, dashboard_addr=dashboard_addr,
    )
    try:
        daemon_mod.main(config)
    except daemon_mod.DaemonError as e:
        fail(f"shoal daemon: {e}")
    except PermissionError as e:
        fail(f"shoal daemon: permission denied: {e.filename} (run as root?)")


def _register() -> None:
    from cli.config_cmds import config
    from cli.image_cmds import image
    from cli.lab_cmds import lab
    from cli.network_cmds import network
    from cli.node_cmds import node
    from cli.secret_cmds import secret
    from cli.service_cmds import service
    from cli.swarm_ca import ca as swarm_ca
    from cli.swarm_cmds import swarm
    from cli.volume_cmds import volume

    for group in (lab, swarm, node, service, network, secret, config, image, volume):
        shoal.add_command(group)
    swarm.add_command(swarm_ca)        # `shoal swarm ca` (root CA rotation)


_register()
