"""`shoal network ...`: create, ls, inspect, rm, prune of swarm (overlay) networks, as the docker
CLI does them (cli/command/network/ of docker/cli 28): the same requests, texts and prompts.

Only the network objects: the daemon's allocator picks a subnet when none is given, and the
overlay data plane follows from the store. `create` checks its IPAM flags client-side with the
docker CLI's texts; `rm` of the routing-mesh (ingress) network and `prune` ask first, unless -f.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from typing import Any

import click

from cli.client import ApiResponseError, DaemonClient
from cli.common import FilterQuery, console, err_console, fail, filter_option, with_client
from cli.task_format import columns

INGRESS_WARNING = ("WARNING! Before removing the routing-mesh network, make sure all the nodes in your swarm run "
                   "the same docker engine version. Otherwise, removal may not be effective and functionality of "
                   "newly create ingress networks will be impaired.\nAre you sure you want to continue?")
PRUNE_WARNING = ("WARNING! This will remove all custom networks not used by at least one container.\n"
                 "Are you sure you want to continue?")


@click.group()
def network() -> None:
    """Manage networks."""


class IpamFlagError(Exception):
    """IPAM flags that do not fit together (the docker CLI's text)."""


def confirm(message: str) -> bool:
    """The docker CLI's prompt: the message and " [y/N] " on stdout, yes only for a "y" line."""
    sys.stdout.write(f"{message} [y/N] ")
    sys.stdout.flush()
    line = sys.stdin.readline()
    return line.strip().lower() == "y"


def _key_values(items: tuple[str, ...], what: str) -> dict[str, str]:
    """KEY=VALUE items (a bare KEY is KEY="") as the docker CLI's map options read them."""
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key.strip():
            raise click.BadParameter(f"invalid {what} '{item}': empty name")
        out[key] = value
    return out


def _network_of(text: str, flag: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise click.UsageError(f'invalid argument "{text}" for "{flag}" flag: invalid CIDR address: {text}') \
            from None


def _address_of(text: str, flag: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise click.UsageError(f'invalid argument "{text}" for "{flag}" flag: invalid string being converted '
                               f"to IP address: {text}") from None


def ipam_config(subnets: tuple[str, ...], ranges: tuple[str, ...], gateways: tuple[str, ...],
                aux: dict[str, str]) -> list[dict[str, Any]]:
    """The IPAM `Config` list as the docker CLI consolidates its flags (createIPAMConfig): each
    range, gateway and auxiliary address goes with the subnet that contains it. Raises
    IpamFlagError with the docker CLI's text."""
    if len(subnets) < len(ranges) or len(subnets) < len(gateways):
        raise IpamFlagError("every ip-range or gateway must have a corresponding subnet")
    parsed: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    for text in subnets:
        net = _network_of(text, "--subnet")
        if any(other.version == net.version and net.overlaps(other) for _, other in parsed):
            raise IpamFlagError("multiple overlapping subnet configuration is not supported")
        parsed.append((text, net))
    configs: dict[str, dict[str, Any]] = {text: {"Subnet": text} for text, _ in parsed}
    for text in ranges:
        wanted = _network_of(text, "--ip-range")
        shown = str(wanted)
        match = False
        for subnet, net in parsed:
            if wanted.version != net.version or wanted.network_address not in net:
                continue
            if "IPRange" in configs[subnet]:
                raise IpamFlagError(f"cannot configure multiple ranges ({shown}, {configs[subnet]['IPRange']}) "
                                           f"on the same subnet ({subnet})")
            configs[subnet]["IPRange"] = shown
            match = True
        if not match:
            raise IpamFlagError(f"no matching subnet for range {shown}")
    for text in gateways:
        address = _address_of(text, "--gateway")
        match = False
        for subnet, net in parsed:
            if address.version != net.version or address not in net:
                continue
            if "Gateway" in configs[subnet]:
                raise IpamFlagError(f"cannot configure multiple gateways ({address}, "
                                           f"{configs[subnet]['Gateway']}) for the same subnet ({subnet})")
            configs[subnet]["Gateway"] = str(address)
            match = True
        if not match:
            raise IpamFlagError(f"no matching subnet for gateway {address}")
    for key, text in aux.items():
        address = _address_of(text, "--aux-address")
        match = False
        for subnet, net in parsed:
            if address.version == net.version and address in net:
                configs[subnet].setdefault("AuxiliaryAddresses", {})[key] = str(address)
                match = True
        if not match:
            raise IpamFlagError(f"no matching subnet for aux-address {text}")
    return list(configs.values())


@network.command()
@click.argument("name")
@click.option("--driver", "-d", default="overlay", show_default=True, help="Driver to manage the Network.")
@click.option("--opt", "-o", multiple=True, help="Set driver specific options (KEY=VALUE).")
@click.option("--label", multiple=True, help="Set metadata on a network (KEY=VALUE).")
@click.option("--internal", is_flag=True, help="Restrict external access to the network.")
@click.option("--attachable", is_flag=True, help="Enable manual container attachment.")
@click.option("--ingress", is_flag=True, help="Create swarm routing-mesh network.")
@click.option("--ipv6", is_flag=True, help="Enable IPv6 networking.")
@click.option("--scope", default="", help="Control the network's scope.")
@click.option("--ipam-driver", default="default", show_default=True, help="IP Address Management Driver.")
@click.option("--subnet", multiple=True, help="Subnet in CIDR format that represents a network segment.")
@click.option("--ip-range", multiple=True, help="Allocate container ip from a sub-range.")
@click.option("--gateway", multiple=True, help="IPv4 or IPv6 Gateway for the master subnet.")
@click.option("--aux-address", multiple=True, help="Auxiliary IPv4 or IPv6 addresses used by Network driver.")
@click.option("--ipam-opt", multiple=True, help="Set IPAM driver specific options.")
@click.pass_context
def create(ctx: click.Context, name: str, driver: str, opt: tuple[str, ...], label: tuple[str, ...], internal: bool,
           attachable: bool, ingress: bool, ipv6: bool, scope: str, ipam_driver: str, subnet: tuple[str, ...],
           ip_range: tuple[str, ...], gateway: tuple[str, ...], aux_address: tuple[str, ...],
           ipam_opt: tuple[str, ...]) -> None:
    """Create a network."""
    labels = _key_values(label, "label")
    options = _key_values(opt, "option")
    try:
        config = ipam_config(subnet, ip_range, gateway, _key_values(aux_address, "aux-address"))
    except IpamFlagError as e:
        fail(str(e))
    body: dict[str, Any] = {
        "Name": name, "Driver": driver, "Scope": scope,
        "IPAM": {"Driver": ipam_driver, "Options": _key_values(ipam_opt, "ipam-opt"), "Config": config},
        "Internal": internal, "Attachable": attachable, "Ingress": ingress, "ConfigOnly": False,
        "Options": options, "Labels": labels,
    }
    if ipv6:
        body["EnableIPv6"] = True

    async def go(client: DaemonClient) -> Any:
        return await client.post("/networks/create", body)

    console.print(with_client(ctx, go)["Id"], markup=False)


def _natural_key(text: str) -> list[Any]:
    """The docker CLI's sortorder.NaturalLess: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


@network.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="Only display network IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate the output.")
@filter_option("--filter", "-f", help="Provide filter values (e.g. 'driver=overlay').")
@click.pass_context
def ls(ctx: click.Context, quiet: bool, no_trunc: bool, filters: FilterQuery | None) -> None:
    """List networks."""

    async def go(client: DaemonClient) -> Any:
        return await client.get("/networks", filters=filters)

    nets = sorted(with_client(ctx, go), key=lambda n: _natural_key(n["Name"]))
    ids = [n["Id"] if no_trunc else n["Id"][:12] for n in nets]
    if quiet:
        for network_id in ids:
            console.print(network_id, markup=False)
        return
    rows = [[network_id, n["Name"], n["Driver"], n["Scope"]] for network_id, n in zip(ids, nets, strict=True)]
    console.print(columns(("NETWORK ID", "NAME", "DRIVER", "SCOPE"), rows), markup=False)


@network.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--verbose", "-v", is_flag=True, help="Verbose output for diagnostics.")
@click.pass_context
def inspect(ctx: click.Context, refs: tuple[str, ...], verbose: bool) -> None:
    """Display detailed information on one or more networks."""
    params = {"verbose": "true"} if verbose else None

    async def go(client: DaemonClient) -> tuple[list[Any], list[str]]:
        found, errors = [], []
        for ref in refs:
            try:
                found.append((await client.request("GET", f"/networks/{ref}", params=params))[1])
            except ApiResponseError as e:
                errors.append(str(e))
        return found, errors

    found, errors = with_client(ctx, go)
    console.print(json.dumps(found, indent=4), markup=False)
    if errors:
        fail("\n".join(errors))


@network.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--force", "-f", is_flag=True, help="Do not error if the network does not exist.")
@click.pass_context
def rm(ctx: click.Context, refs: tuple[str, ...], force: bool) -> None:
    """Remove one or more networks.

    Removing the routing-mesh (ingress) network asks first, unless --force."""

    async def go(client: DaemonClient) -> bool:
        ok = True
        for ref in refs:
            try:
                found = (await client.request("GET", f"/networks/{ref}"))[1]
            except ApiResponseError:
                found = None
            if isinstance(found, dict) and found.get("Ingress") and not force and not confirm(INGRESS_WARNING):
                continue
            try:
                await client.delete(f"/networks/{ref}")
            except ApiResponseError as e:
                if force and e.status == 404:
                    continue
                err_console.print(str(e), markup=False)
                ok = False
                continue
            console.print(ref, markup=False)
        return ok

    if not with_client(ctx, go):
        raise SystemExit(1)


@network.command()
@click.option("--force", "-f", is_flag=True, help="Do not prompt for confirmation.")
@filter_option("--filter", help="Provide filter values (e.g. 'until=<timestamp>').")
@click.pass_context
def prune(ctx: click.Context, force: bool, filters: FilterQuery | None) -> None:
    """Remove all unused networks."""
    if not force and not confirm(PRUNE_WARNING):
        return

    async def go(client: DaemonClient) -> Any:
        return await client.post("/networks/prune", filters=filters)

    deleted = (with_client(ctx, go) or {}).get("NetworksDeleted") or []
    if deleted:
        console.print("Deleted Networks:\n" + "".join(f"{name}\n" for name in deleted), markup=False)
