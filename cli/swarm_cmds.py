"""`shoal swarm init|join|join-token|leave|inspect|update|unlock|unlock-key`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cli.client import DaemonClient
from cli.common import console, fail, with_client
from cli.service_flags import FlagError, parse_duration


def parse_duration_ns(text: str, flag: str) -> int:
    try:
        return parse_duration(text, flag)
    except FlagError as e:
        fail(str(e))
    raise AssertionError("unreachable")


@click.group()
def swarm() -> None:
    """Manage the swarm."""


async def _join_command(c: DaemonClient, role: str, quiet: bool) -> str:
    cluster = await c.get("/swarm")
    token = cluster["JoinTokens"]["Worker" if role == "worker" else "Manager"]
    if quiet:
        return str(token)
    info = await c.get("/info")
    node = await c.get(f"/nodes/{info['Swarm']['NodeID']}")
    addr = (node.get("ManagerStatus") or {}).get("Addr", "")
    return (f"To add a {role} to this swarm, run the following command:\n\n"
            f"    shoal swarm join --token {token} {addr}\n")


def unlock_text(key: str) -> str:
    """What docker prints with a new or rotated unlock key."""
    return ("To unlock a swarm manager after it restarts, run the `shoal swarm unlock`\n"
            f"command and provide the following key:\n\n    {key}\n\n"
            "Remember to store this key in a password manager, since without it you\n"
            "will not be able to restart the manager.\n")


def _autolock(cluster: dict[str, Any]) -> bool:
    return bool((cluster.get("Spec", {}).get("EncryptionConfig") or {}).get("AutoLockManagers"))


@swarm.command()
@click.option("--advertise-addr", default="", help="Address other nodes use to reach this one (IP[:PORT]).")
@click.option("--listen-addr", default="0.0.0.0:2377", show_default=True, help="Cluster listen address.")
@click.option("--force-new-cluster", is_flag=True, help="Recover a manager that lost quorum.")
@click.option("--availability", type=click.Choice(["active", "pause", "drain"]), default="active")
@click.option("--dispatcher-heartbeat", default="", help="Heartbeat period (e.g. 5s).")
@click.option("--task-history-limit", type=int, default=None, help="Task history retention limit.")
@click.option("--rebalance", is_flag=True,
              help="Move tasks to even out their spread when a node joins or becomes active.")
@click.option("--autolock", is_flag=True,
              help="Lock the managers' data at rest with a key you hold: a restarted manager needs `swarm unlock`.")
@click.pass_context
def init(ctx: click.Context, advertise_addr: str, listen_addr: str, force_new_cluster: bool, availability: str,
         dispatcher_heartbeat: str, task_history_limit: int | None, rebalance: bool, autolock: bool) -> None:
    """Make this node the first manager of a new swarm."""
    spec: dict[str, Any] = {}
    if dispatcher_heartbeat:
        spec["Dispatcher"] = {"HeartbeatPeriod": parse_duration_ns(dispatcher_heartbeat, "--dispatcher-heartbeat")}
    if task_history_limit is not None:
        spec["Orchestration"] = {"TaskHistoryRetentionLimit": task_history_limit}
    if rebalance:
        spec.setdefault("Orchestration", {})["Rebalance"] = True
    if autolock:
        spec["EncryptionConfig"] = {"AutoLockManagers": True}
    body = {"AdvertiseAddr": advertise_addr, "ListenAddr": listen_addr, "ForceNewCluster": force_new_cluster,
            "Availability": availability, "Spec": spec, "AutoLockManagers": autolock}

    async def go(c: DaemonClient) -> str:
        node_id = await c.post("/swarm/init", body)
        text = f"Swarm initialized: current node ({node_id}) is now a manager.\n\n" + \
            await _join_command(c, "worker", False) + \
            "\nTo add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n"
        if autolock:
            text += "\n" + unlock_text(str((await c.get("/swarm/unlockkey"))["UnlockKey"]))
        return text

    console.print(with_client(ctx, go), markup=False)


@swarm.command()
@click.option("--token", required=True, help="Join token (worker or manager).")
@click.option("--advertise-addr", default="")
@click.option("--listen-addr", default="0.0.0.0:2377", show_default=True)
@click.option("--availability", type=click.Choice(["active", "pause", "drain"]), default="active")
@click.argument("remote")
@click.pass_context
def join(ctx: click.Context, token: str, advertise_addr: str, listen_addr: str, availability: str,
         remote: str) -> None:
    """Join a swarm through the manager at REMOTE (HOST:PORT)."""
    body = {"ListenAddr": listen_addr, "AdvertiseAddr": advertise_addr, "RemoteAddrs": [remote],
            "JoinToken": token, "Availability": availability}

    async def go(c: DaemonClient) -> bool:
        await c.post("/swarm/join", body)
        info = await c.get("/info")
        return bool(info["Swarm"].get("ControlAvailable"))

    manager = with_client(ctx, go)
    console.print(f"This node joined a swarm as a {'manager' if manager else 'worker'}.")


@swarm.command("join-token")
@click.option("-q", "--quiet", is_flag=True, help="Only print the token.")
@click.option("--rotate", is_flag=True, help="Rotate the token.")
@click.argument("role", type=click.Choice(["worker", "manager"]))
@click.pass_context
def join_token(ctx: click.Context, quiet: bool, rotate: bool, role: str) -> None:
    """Show (or rotate) the join token for ROLE."""

    async def go(c: DaemonClient) -> str:
        if rotate:
            cluster = await c.get("/swarm")
            await c.post("/swarm/update", cluster["Spec"], version=cluster["Version"]["Index"],
                         rotateWorkerToken=str(role == "worker").lower(),
                         rotateManagerToken=str(role == "manager").lower(),
                         rotateManagerUnlockKey="false")
        text = await _join_command(c, role, quiet)
        if rotate and not quiet:
            text = f"Successfully rotated {role} join token.\n\n" + text
        return text

    console.print(with_client(ctx, go), markup=False)


@swarm.command()
@click.option("-f", "--force", is_flag=True, help="Leave even if this loses quorum or the swarm's state.")
@click.pass_context
def leave(ctx: click.Context, force: bool) -> None:
    """Leave the swarm."""

    async def go(c: DaemonClient) -> None:
        await c.post("/swarm/leave", None, force=force)

    with_client(ctx, go)
    console.print("Node left the swarm.")


@swarm.command()
@click.pass_context
def inspect(ctx: click.Context) -> None:
    """Show the swarm's configuration."""

    async def go(c: DaemonClient) -> Any:
        return await c.get("/swarm")

    console.print_json(json.dumps(with_client(ctx, go)))


@swarm.command()
@click.option("--dispatcher-heartbeat", default="", help="Heartbeat period (e.g. 5s).")
@click.option("--task-history-limit", type=int, default=None)
@click.option("--cert-expiry", default="", help="Validity of node certificates (e.g. 2160h).")
@click.option("--rebalance/--no-rebalance", default=None,
              help="Move tasks to even out their spread when a node joins or becomes active (or stop doing so).")
@click.option("--autolock", type=click.BOOL, default=None, is_flag=False, flag_value=True,
              help="Turn autolock on (--autolock, --autolock=true) or off (--autolock=false).")
@click.pass_context
def update(ctx: click.Context, dispatcher_heartbeat: str, task_history_limit: int | None, cert_expiry: str,
           rebalance: bool | None, autolock: bool | None) -> None:
    """Update the swarm's configuration."""
    if not (dispatcher_heartbeat or task_history_limit is not None or cert_expiry or rebalance is not None
            or autolock is not None):
        fail("nothing to update: give --dispatcher-heartbeat, --task-history-limit, --cert-expiry, --rebalance "
             "or --autolock")

    async def go(c: DaemonClient) -> str:
        cluster = await c.get("/swarm")
        spec = cluster["Spec"]
        was_locked = _autolock(cluster)
        if autolock is not None:
            spec["EncryptionConfig"] = {**(spec.get("EncryptionConfig") or {}), "AutoLockManagers": autolock}
        if dispatcher_heartbeat:
            spec.setdefault("Dispatcher", {})["HeartbeatPeriod"] = parse_duration_ns(
                dispatcher_heartbeat, "--dispatcher-heartbeat")
        if task_history_limit is not None:
            spec.setdefault("Orchestration", {})["TaskHistoryRetentionLimit"] = task_history_limit
        if cert_expiry:
            spec.setdefault("CAConfig", {})["NodeCertExpiry"] = parse_duration_ns(cert_expiry, "--cert-expiry")
        if rebalance is not None:
            spec.setdefault("Orchestration", {})["Rebalance"] = rebalance
        await c.post("/swarm/update", spec, version=cluster["Version"]["Index"], rotateWorkerToken="false",
                     rotateManagerToken="false", rotateManagerUnlockKey="false")
        if autolock and not was_locked:     # as docker: the new key is shown once, when autolock turns on
            return "Swarm updated.\n" + unlock_text(str((await c.get("/swarm/unlockkey"))["UnlockKey"]))
        return "Swarm updated.\n"

    console.print(with_client(ctx, go), markup=False, end="")


def _read_unlock_key() -> str:
    """From the terminal without echo (as `docker swarm unlock`), else the first line of stdin."""
    if sys.stdin.isatty():
        return str(click.prompt("Enter unlock key", hide_input=True, prompt_suffix=": "))
    return sys.stdin.readline().strip()


@swarm.command()
@click.pass_context
def unlock(ctx: click.Context) -> None:
    """Unlock a locked manager: give the unlock key (prompted for, or read from stdin)."""

    async def state(c: DaemonClient) -> str:
        return str(((await c.get("/info")).get("Swarm") or {}).get("LocalNodeState", "inactive"))

    current = with_client(ctx, state)
    if current == "inactive":
        fail("Error: This node is not part of a swarm")
    if current != "locked":
        fail("Error: swarm is not locked")
    key = _read_unlock_key()

    async def go(c: DaemonClient) -> None:
        await c.post("/swarm/unlock", {"UnlockKey": key})

    with_client(ctx, go)


@swarm.command("unlock-key")
@click.option("-q", "--quiet", is_flag=True, help="Only print the unlock key.")
@click.option("--rotate", is_flag=True, help="Rotate the unlock key.")
@click.pass_context
def unlock_key(ctx: click.Context, quiet: bool, rotate: bool) -> None:
    """Show (or rotate) the key that unlocks a restarted manager."""

    async def go(c: DaemonClient) -> str:
        text = ""
        if rotate:
            cluster = await c.get("/swarm")
            if not _autolock(cluster):
                fail("cannot rotate because autolock is not turned on")
            await c.post("/swarm/update", cluster["Spec"], version=cluster["Version"]["Index"],
                         rotateWorkerToken="false", rotateManagerToken="false", rotateManagerUnlockKey="true")
            text = "" if quiet else "Successfully rotated manager unlock key.\n\n"
        key = str((await c.get("/swarm/unlockkey")).get("UnlockKey") or "")
        if not key:
            fail("no unlock key is set")
        return key + "\n" if quiet else text + unlock_text(key)

    console.print(with_client(ctx, go), markup=False, end="")
