"""`shoal service ...`: create, ls, ps, inspect, scale, update, rollback, rm.

Theory of operation: each command talks only to the daemon's Engine API through DaemonClient.
Flags become a ServiceSpec in cli/service_flags.py (bad values stop the command with one line
naming the flag). create/update/scale/rollback then follow the service until it converged
(cli/service_progress.py) unless --detach, within --timeout seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click

from cli.client import ApiResponseError, DaemonClient
from cli.common import FilterQuery, console, err_console, fail, filter_option, remove_each, with_client, with_filter
from cli.service_flags import (
    FlagError,
    apply_scalar_flags,
    image_with_tag,
    new_service_spec,
    parse_file_ref,
    parse_key_values,
    parse_mount,
    parse_ports,
    parse_preference,
    update_ports,
)
from cli.service_logs import logs as service_logs
from cli.service_progress import wait_for_convergence
from cli.task_format import SERVICE_HEADERS, TASK_HEADERS, columns, service_rows, task_rows
from manager.orchestrator.rebalance import REQUEST_LABEL

F = Callable[..., Any]


def _options(*decorators: F) -> F:
    def apply(fn: F) -> F:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn
    return apply


FAILURE_ACTIONS = click.Choice(["pause", "continue", "rollback"])
ENDPOINT_MODES = click.Choice(["vip", "dnsrr"], case_sensitive=False)
ORDERS = click.Choice(["stop-first", "start-first"])

scalar_options = _options(
    click.option("--replicas", type=int, default=None, help="Number of tasks."),
    click.option("--limit-cpu", default=None, help="Limit CPUs (e.g. 0.5)."),
    click.option("--limit-memory", default=None, help="Limit memory (e.g. 64M)."),
    click.option("--reserve-cpu", default=None, help="Reserve CPUs."),
    click.option("--reserve-memory", default=None, help="Reserve memory."),
    click.option("--restart-condition", type=click.Choice(["none", "on-failure", "any"]), default=None),
    click.option("--restart-delay", default=None, help="Delay between restarts (e.g. 5s)."),
    click.option("--restart-max-attempts", type=int, default=None),
    click.option("--restart-window", default=None, help="Window used to evaluate the restart policy."),
    click.option("--update-parallelism", type=int, default=None),
    click.option("--update-delay", default=None),
    click.option("--update-failure-action", type=FAILURE_ACTIONS, default=None),
    click.option("--update-order", type=ORDERS, default=None),
    click.option("--update-monitor", default=None),
    click.option("--update-max-failure-ratio", default=None),
    click.option("--rollback-parallelism", type=int, default=None),
    click.option("--rollback-delay", default=None),
    click.option("--rollback-failure-action", type=click.Choice(["pause", "continue"]), default=None),
    click.option("--rollback-order", type=ORDERS, default=None),
    click.option("--rollback-monitor", default=None),
    click.option("--rollback-max-failure-ratio", default=None),
    click.option("--stop-grace-period", default=None, help="Time to wait before force-killing (e.g. 10s)."),
    click.option("--stop-signal", default=None),
    click.option("--workdir", "-w", default=None),
    click.option("--user", "-u", default=None),
    click.option("--hostname", default=None),
    click.option("--entrypoint", default=None, help="Overwrite the image's entrypoint."),
    click.option("--health-cmd", default=None),
    click.option("--health-interval", default=None),
    click.option("--health-timeout", default=None),
    click.option("--health-retries", type=int, default=None),
    click.option("--health-start-period", default=None),
    click.option("--no-healthcheck", is_flag=True, default=False),
    click.option("--detach", "-d", is_flag=True, default=False, help="Do not wait for the service to converge."),
    click.option("--quiet", "-q", is_flag=True, default=False, help="Suppress progress output."),
    click.option("--timeout", type=float, default=300.0, show_default=True,
                 help="Seconds to wait for convergence."),
)


@click.group()
def service() -> None:
    """Manage services."""


service.add_command(service_logs)


# -- helpers ------------------------------------------------------------------------------------
def _spec_errors(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except FlagError as e:
        fail(str(e))


async def _resolve_refs(client: DaemonClient, spec: dict[str, Any], secrets: list[str], configs: list[str]) -> None:
    container = spec["TaskTemplate"]["ContainerSpec"]
    for refs, table, key, id_key, name_key in ((secrets, "secrets", "Secrets", "SecretID", "SecretName"),
                                               (configs, "configs", "Configs", "ConfigID", "ConfigName")):
        for text in refs:
            try:
                ref = parse_file_ref(text, f"--{table[:-1]}")
            except FlagError as e:
                fail(str(e))
            found = await client.get(f"/{table}", filters={"names": [ref["source"]]})
            if not found:
                fail(f"{table[:-1]} not found: {ref['source']}")
            container.setdefault(key, []).append({"File": ref["File"], id_key: found[0]["ID"],
                                                  name_key: ref["source"]})


async def _wait(client: DaemonClient, service_id: str, opts: dict[str, Any]) -> None:
    if not opts.get("detach"):
        await wait_for_convergence(client, service_id, timeout=opts.get("timeout") or 300.0, console=console,
                                   quiet=bool(opts.get("quiet")))


# -- create ---------------------------------------------------------------------------------------
@service.command(context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.option("--name", default="", help="Service name.")
@click.option("--mode", type=click.Choice(["replicated", "global"]), default="replicated", show_default=True)
@click.option("--env", "-e", multiple=True, help="Set an environment variable (KEY=VALUE).")
@click.option("--label", "-l", multiple=True, help="Service label (KEY=VALUE).")
@click.option("--container-label", multiple=True)
@click.option("--constraint", multiple=True, help="Placement constraint (node.role==manager).")
@click.option("--placement-pref", multiple=True, help="Placement preference (spread=node.labels.zone).")
@click.option("--mount", multiple=True, help="type=bind|volume|tmpfs,source=...,target=...[,readonly]")
@click.option("--publish", "-p", multiple=True,
              help="Publish a port as a node port: 8080:80[/udp], 80 (any free port), or "
                   "published=8080,target=80,protocol=udp,mode=host.")
@click.option("--endpoint-mode", type=ENDPOINT_MODES, default="vip", show_default=True,
              help="Endpoint mode (vip or dnsrr).")
@click.option("--network", multiple=True, help="Attach to a network.")
@click.option("--secret", multiple=True, help="Give the service a secret.")
@click.option("--config", multiple=True, help="Give the service a config.")
@scalar_options
@click.argument("image")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def create(ctx: click.Context, name: str, mode: str, env: tuple[str, ...], label: tuple[str, ...],
           container_label: tuple[str, ...], constraint: tuple[str, ...], placement_pref: tuple[str, ...],
           mount: tuple[str, ...], publish: tuple[str, ...], endpoint_mode: str, network: tuple[str, ...],
           secret: tuple[str, ...], config: tuple[str, ...], image: str, args: tuple[str, ...], **opts: Any) -> None:
    """Create a new service: IMAGE [COMMAND [ARG...]]."""
    if mode == "global" and opts.get("replicas") is not None:
        fail("--replicas can only be used with replicated mode")

    def build() -> dict[str, Any]:
        spec = new_service_spec(name, image, args, mode)
        spec["Labels"] = parse_key_values(label, "--label")
        container = spec["TaskTemplate"]["ContainerSpec"]
        if env:
            container["Env"] = list(env)
        if container_label:
            container["Labels"] = parse_key_values(container_label, "--container-label")
        if mount:
            container["Mounts"] = [parse_mount(m) for m in mount]
        placement: dict[str, Any] = {}
        if constraint:
            placement["Constraints"] = list(constraint)
        if placement_pref:
            placement["Preferences"] = [parse_preference(p) for p in placement_pref]
        spec["TaskTemplate"]["Placement"] = placement
        spec["EndpointSpec"]["Mode"] = endpoint_mode.lower()
        if publish:
            spec["EndpointSpec"]["Ports"] = [port for text in publish for port in parse_ports(text)]
        if network:
            spec["TaskTemplate"]["Networks"] = [{"Target": n} for n in network]
        apply_scalar_flags(spec, opts)
        return spec

    spec = _spec_errors(build)

    async def go(client: DaemonClient) -> None:
        await _resolve_refs(client, spec, list(secret), list(config))
        created = await client.post("/services/create", spec)
        for warning in created.get("Warnings") or []:
            err_console.print(warning, markup=False)
        console.print(created["ID"], markup=False)
        await _wait(client, created["ID"], opts)

    with_client(ctx, go)


# -- ls / ps / inspect -----------------------------------------------------------------------------
@service.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="Only display IDs.")
@filter_option("--filter", "-f", help="Filter output (name=web, label=a=b, mode=global).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def ls(ctx: click.Context, quiet: bool, filters: FilterQuery | None, fmt: str) -> None:
    """List services."""

    async def go(client: DaemonClient) -> list[dict[str, Any]]:
        return list(await client.get("/services", filters=filters, status=None if quiet else "true"))

    services = with_client(ctx, go)
    if quiet:
        for s in services:
            console.print(s["ID"], markup=False)
    elif fmt == "json":
        console.print(json.dumps(services, indent=4), markup=False)
    else:
        console.print(columns(SERVICE_HEADERS, service_rows(services)), markup=False)


@service.command()
@click.argument("services", nargs=-1, required=True)
@click.option("--quiet", "-q", is_flag=True, help="Only display task IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@filter_option("--filter", "-f", help="Filter output (desired-state=running, node=x).")
@click.pass_context
def ps(ctx: click.Context, services: tuple[str, ...], quiet: bool, no_trunc: bool,
       filters: FilterQuery | None) -> None:
    """List the tasks of one or more services."""

    async def go(client: DaemonClient) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
        names: dict[str, str] = {}
        for ref in services:
            try:
                svc = await client.get(f"/services/{ref}", insertDefaults="false")
            except ApiResponseError as e:
                if e.status == 404:
                    fail(f"no such service: {ref}")
                raise
            names[svc["ID"]] = svc["Spec"].get("Name", "")
        tasks = await client.get("/tasks", filters=with_filter(filters, "service", *names))
        nodes = await client.get("/nodes") if tasks else []
        node_names = {n["ID"]: (n["Spec"].get("Name") or n["Description"].get("Hostname") or n["ID"])
                      for n in nodes}
        return tasks, names, node_names

    tasks, names, node_names = with_client(ctx, go)
    if quiet:
        for t in tasks:
            console.print(t["ID"], markup=False)
        return
    rows = task_rows(tasks, names, node_names, time.time(), no_trunc)
    console.print(columns(TASK_HEADERS, rows), markup=False)


@service.command()
@click.argument("services", nargs=-1, required=True)
@click.option("--pretty", is_flag=True, help="Human-readable output.")
@click.pass_context
def inspect(ctx: click.Context, services: tuple[str, ...], pretty: bool) -> None:
    """Show details of one or more services."""

    async def go(client: DaemonClient) -> list[dict[str, Any]]:
        return [await client.get(f"/services/{ref}", insertDefaults="true") for ref in services]

    found = with_client(ctx, go)
    if not pretty:
        console.print(json.dumps(found, indent=4), markup=False)
        return
    for svc in found:
        console.print(pretty_service(svc), markup=False)


def pretty_service(svc: dict[str, Any]) -> str:
    spec = svc["Spec"]
    tmpl = spec["TaskTemplate"]
    container = tmpl.get("ContainerSpec") or {}
    mode = spec.get("Mode") or {}
    lines = [f"ID:\t\t{svc['ID']}", f"Name:\t\t{spec.get('Name', '')}"]
    if spec.get("Labels"):
        lines.append("Labels:")
        lines += [f" {k}={v}" for k, v in spec["Labels"].items()]
    if "Replicated" in mode:
        lines += ["Service Mode:\tReplicated", f" Replicas:\t{mode['Replicated'].get('Replicas', 1)}"]
    else:
        lines.append(f"Service Mode:\t{next(iter(mode), 'Replicated')}")
    status = svc.get("UpdateStatus")
    if status:
        lines += ["UpdateStatus:", f" State:\t\t{status.get('State', '')}",
                  f" Started:\t{status.get('StartedAt', '')}", f" Message:\t{status.get('Message', '')}"]
    placement = tmpl.get("Placement") or {}
    lines.append("Placement:")
    if placement.get("Constraints"):
        lines.append(f" Constraints:\t{placement['Constraints']}")
    for key in ("UpdateConfig", "RollbackConfig"):
        cfg = spec.get(key) or {}
        lines += [f"{key}:", f" Parallelism:\t{cfg.get('Parallelism', 1)}",
                  f" On failure:\t{cfg.get('FailureAction', 'pause')}",
                  f" Monitor:\t{(cfg.get('Monitor') or 0) / 1e9:g}s",
                  f" Update order:\t{cfg.get('Order', 'stop-first')}"]
    lines += ["ContainerSpec:", f" Image:\t\t{container.get('Image', '')}"]
    if container.get("Args"):
        lines.append(f" Args:\t\t{' '.join(container['Args'])}")
    if container.get("Env"):
        lines.append(f" Env:\t\t{' '.join(container['Env'])}")
    resources = tmpl.get("Resources") or {}
    if resources.get("Limits") or resources.get("Reservations"):
        lines.append("Resources:")
        for part in ("Limits", "Reservations"):
            for k, v in (resources.get(part) or {}).items():
                lines.append(f" {part} {k}:\t{v}")
    if tmpl.get("Networks"):
        lines.append("Networks:\t" + " ".join(n["Target"] for n in tmpl["Networks"]))
    lines.append(f"Endpoint Mode:\t{(spec.get('EndpointSpec') or {}).get('Mode', 'vip')}")
    for p in (spec.get("EndpointSpec") or {}).get("Ports") or []:
        lines.append(f" PublishedPort = {p.get('PublishedPort', 0)} -> TargetPort = {p.get('TargetPort')}"
                     f"/{p.get('Protocol', 'tcp')} ({p.get('PublishMode', 'ingress')})")
    return "\n".join(lines) + "\n"


# -- scale / update / rollback / rm ----------------------------------------------------------------
@service.command()
@click.argument("pairs", nargs=-1, required=True)
@click.option("--detach", "-d", is_flag=True, help="Do not wait for the services to converge.")
@click.option("--timeout", type=float, default=300.0, show_default=True)
@click.pass_context
def scale(ctx: click.Context, pairs: tuple[str, ...], detach: bool, timeout: float) -> None:
    """Scale one or more replicated services: SERVICE=REPLICAS ..."""
    wanted: list[tuple[str, int]] = []
    for pair in pairs:
        name, eq, count = pair.partition("=")
        if not eq or not name or not count.isdigit():
            fail(f"invalid scale specifier '{pair}': expected SERVICE=REPLICAS with REPLICAS a number >= 0")
        wanted.append((name, int(count)))

    async def go(client: DaemonClient) -> bool:
        scaled, ok = [], True
        for name, count in wanted:
            try:
                svc = await client.get(f"/services/{name}", insertDefaults="false")
                mode = svc["Spec"].get("Mode") or {}
                if "Replicated" in mode:
                    mode["Replicated"]["Replicas"] = count
                elif "ReplicatedJob" in mode:
                    mode["ReplicatedJob"]["TotalCompletions"] = count
                else:
                    raise FlagError(f"scale can only be used with replicated or replicated-job mode: {name}")
                await client.post(f"/services/{svc['ID']}/update", svc["Spec"], version=svc["Version"]["Index"])
            except (ApiResponseError, FlagError) as e:
                err_console.print(str(e), markup=False)
                ok = False
                continue
            console.print(f"{name} scaled to {count}", markup=False)
            scaled.append(svc["ID"])
        for service_id in scaled:
            await _wait(client, service_id, {"detach": detach, "timeout": timeout})
        return ok

    if not with_client(ctx, go):
        raise SystemExit(1)


def _edit_list(current: list[Any] | None, add: list[Any], remove: Callable[[Any], bool]) -> list[Any]:
    return [item for item in current or [] if not remove(item)] + add


@service.command()
@click.option("--image", default=None, help="Service image tag.")
@click.option("--args", "args_", default=None, help="Service command args (space separated).")
@click.option("--env-add", multiple=True)
@click.option("--env-rm", multiple=True)
@click.option("--label-add", multiple=True)
@click.option("--label-rm", multiple=True)
@click.option("--constraint-add", multiple=True)
@click.option("--constraint-rm", multiple=True)
@click.option("--placement-pref-add", multiple=True)
@click.option("--placement-pref-rm", multiple=True)
@click.option("--mount-add", multiple=True)
@click.option("--mount-rm", multiple=True, help="Remove a mount by its target path.")
@click.option("--publish-add", multiple=True, help="Add or update a published port (as --publish).")
@click.option("--publish-rm", multiple=True, help="Remove a published port by its target port (80[/udp]).")
@click.option("--endpoint-mode", type=ENDPOINT_MODES, default=None, help="Endpoint mode (vip or dnsrr).")
@click.option("--network-add", multiple=True)
@click.option("--network-rm", multiple=True)
@click.option("--secret-add", multiple=True)
@click.option("--secret-rm", multiple=True, help="Remove a secret by name.")
@click.option("--config-add", multiple=True)
@click.option("--config-rm", multiple=True, help="Remove a config by name.")
@click.option("--force", is_flag=True, help="Redeploy even if nothing changed.")
@click.option("--rollback", is_flag=True, help="Roll back to the previous specification.")
@click.option("--rebalance", is_flag=True,
              help="Even out the spread of the tasks over the nodes, one start-first move at a time.")
@scalar_options
@click.argument("ref")
@click.pass_context
def update(ctx: click.Context, ref: str, image: str | None, args_: str | None, env_add: tuple[str, ...],
           env_rm: tuple[str, ...], label_add: tuple[str, ...], label_rm: tuple[str, ...],
           constraint_add: tuple[str, ...], constraint_rm: tuple[str, ...], placement_pref_add: tuple[str, ...],
           placement_pref_rm: tuple[str, ...], mount_add: tuple[str, ...], mount_rm: tuple[str, ...],
           publish_add: tuple[str, ...], publish_rm: tuple[str, ...], endpoint_mode: str | None,
           network_add: tuple[str, ...],
           network_rm: tuple[str, ...], secret_add: tuple[str, ...], secret_rm: tuple[str, ...],
           config_add: tuple[str, ...], config_rm: tuple[str, ...], force: bool, rollback: bool,
           rebalance: bool, **opts: Any) -> None:
    """Update a service."""

    def edit(spec: dict[str, Any]) -> None:
        tmpl = spec["TaskTemplate"]
        container = tmpl.setdefault("ContainerSpec", {})
        if image is not None:
            container["Image"] = image_with_tag(image)
        if args_ is not None:
            container["Args"] = args_.split()
        env_keys = {e.partition("=")[0] for e in (*env_add, *env_rm)}
        container["Env"] = _edit_list(container.get("Env"), list(env_add), lambda e: e.partition("=")[0] in env_keys)
        labels = spec.setdefault("Labels", {})
        for key in label_rm:
            labels.pop(key, None)
        labels.update(parse_key_values(label_add, "--label-add"))
        placement = tmpl.setdefault("Placement", {})
        placement["Constraints"] = _edit_list(placement.get("Constraints"), list(constraint_add),
                                              lambda c: c in constraint_rm)
        prefs_rm = {p.partition("=")[2] for p in placement_pref_rm}
        placement["Preferences"] = _edit_list(
            placement.get("Preferences"), [parse_preference(p) for p in placement_pref_add],
            lambda p: (p.get("Spread") or {}).get("SpreadDescriptor") in prefs_rm)
        container["Mounts"] = _edit_list(container.get("Mounts"), [parse_mount(m) for m in mount_add],
                                         lambda m: m.get("Target") in mount_rm)
        # the EndpointSpec is touched only by its own flags (a service without one keeps none)
        endpoint = spec.setdefault("EndpointSpec", {}) if publish_add or publish_rm or endpoint_mode else {}
        if publish_add or publish_rm:
            endpoint["Ports"] = update_ports(
                endpoint.get("Ports"), [port for text in publish_add for port in parse_ports(text, "--publish-add")],
                [port for text in publish_rm for port in parse_ports(text, "--publish-rm")])
        if endpoint_mode is not None:
            endpoint["Mode"] = endpoint_mode.lower()
        tmpl["Networks"] = _edit_list(tmpl.get("Networks"), [{"Target": n} for n in network_add],
                                      lambda n: n.get("Target") in network_rm)
        for key, name_key, gone in (("Secrets", "SecretName", secret_rm), ("Configs", "ConfigName", config_rm)):
            container[key] = [r for r in container.get(key) or [] if r.get(name_key) not in gone]
        for key, holder in (("Env", container), ("Mounts", container), ("Secrets", container),
                            ("Configs", container), ("Constraints", placement),
                            ("Preferences", placement), ("Ports", endpoint), ("Networks", tmpl)):
            if not holder.get(key):
                holder.pop(key, None)
        apply_scalar_flags(spec, opts)
        if force:
            tmpl["ForceUpdate"] = int(tmpl.get("ForceUpdate") or 0) + 1
        if rebalance:   # a new request: the leader's rebalancer acts on it once (manager/orchestrator/rebalance.py)
            labels[REQUEST_LABEL] = str(time.time_ns())

    async def go(client: DaemonClient) -> None:
        svc = await client.get(f"/services/{ref}", insertDefaults="false")
        spec = svc["Spec"]
        params: dict[str, Any] = {"version": svc["Version"]["Index"]}
        if rollback:
            params["rollback"] = "previous"
        else:
            _spec_errors(lambda: edit(spec))
            await _resolve_refs(client, spec, list(secret_add), list(config_add))
            nets = spec["TaskTemplate"].get("Networks") or []
            for net in nets:  # the server wants IDs or names; give IDs as the CLI does
                found = await client.get(f"/networks/{net['Target']}", scope="swarm")
                net["Target"] = found["Id"]
        await client.request("POST", f"/services/{svc['ID']}/update", params=params, body=spec)
        console.print(ref, markup=False)
        await _wait(client, svc["ID"], opts)

    with_client(ctx, go)


@service.command("rollback")
@click.argument("ref")
@click.option("--detach", "-d", is_flag=True, help="Do not wait for the service to converge.")
@click.option("--quiet", "-q", is_flag=True, help="Suppress progress output.")
@click.option("--timeout", type=float, default=300.0, show_default=True)
@click.pass_context
def rollback_cmd(ctx: click.Context, ref: str, detach: bool, quiet: bool, timeout: float) -> None:
    """Revert a service to its previous specification."""

    async def go(client: DaemonClient) -> None:
        svc = await client.get(f"/services/{ref}", insertDefaults="false")
        await client.request("POST", f"/services/{svc['ID']}/update",
                             params={"version": svc["Version"]["Index"], "rollback": "previous"}, body=svc["Spec"])
        console.print(ref, markup=False)
        await _wait(client, svc["ID"], {"detach": detach, "quiet": quiet, "timeout": timeout})

    with_client(ctx, go)


@service.command("rm")
@click.argument("services", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Remove one or more services."""
    remove_each(ctx, "/services", services)
