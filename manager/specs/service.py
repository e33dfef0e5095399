"""ServiceSpec: validation (400 errors naming the field), what the server stores, and what
`insertDefaults=true` shows.

- `validate_service_spec(spec)` raises SpecError or returns None; it never changes `spec`.
- `normalize_service_spec(spec, resolve_network)` returns the spec as stored: nulls dropped,
  Labels {}, Mode Replicated{Replicas:1}, ForceUpdate 0, Runtime "container", Isolation
  "default", network names turned into IDs; an EndpointSpec, when there is one, with its Mode
  ("vip" by default) and each port's Protocol ("tcp") and PublishMode ("ingress") lower-case,
  as dockerd shows them (the proto enums' zero values). No EndpointSpec stays none.
- `insert_service_defaults(spec)` returns a copy with the defaults Docker shows on inspect.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from manager.specs.checks import (
    boolean,
    choice,
    driver,
    drop_nulls,
    duration,
    field_map,
    integer,
    object_list,
    string,
    string_list,
    string_map,
    typed_fields,
)
from manager.specs.constraints import parse_constraint
from manager.specs.errors import SpecError

SERVICE_KEYS = frozenset({"Name", "Labels", "TaskTemplate", "Mode", "UpdateConfig", "RollbackConfig",
                          "Networks", "EndpointSpec"})
TASK_KEYS = frozenset({"ContainerSpec", "PluginSpec", "NetworkAttachmentSpec", "Resources", "RestartPolicy",
                       "Placement", "Networks", "LogDriver", "ForceUpdate", "Runtime"})
CONTAINER_KEYS = frozenset({
    "Image", "Labels", "Command", "Args", "Hostname", "Env", "Dir", "User", "Groups", "Privileges", "Init",
    "StopSignal", "TTY", "OpenStdin", "ReadOnly", "Mounts", "StopGracePeriod", "Healthcheck", "HealthCheck",
    "Hosts", "DNSConfig", "Secrets", "Configs", "Isolation", "Sysctls", "CapabilityAdd", "CapabilityDrop",
    "Ulimits", "OomScoreAdj",
})
MODE_KEYS = ("Replicated", "Global", "ReplicatedJob", "GlobalJob")
UPDATE_KEYS = frozenset({"Parallelism", "Delay", "FailureAction", "Monitor", "MaxFailureRatio", "Order"})
RESTART_KEYS = frozenset({"Condition", "Delay", "MaxAttempts", "Window"})
PLACEMENT_KEYS = frozenset({"Constraints", "Preferences", "MaxReplicas", "Platforms"})
RESOURCE_KEYS = frozenset({"Limits", "Reservations"})
ENDPOINT_KEYS = frozenset({"Mode", "Ports"})
PORT_KEYS = frozenset({"Name", "Protocol", "TargetPort", "PublishedPort", "PublishMode"})
HEALTH_DURATIONS = ("Interval", "Timeout", "StartPeriod", "StartInterval")
INVALID_ARGUMENT = "rpc error: code = InvalidArgument desc = "  # how dockerd passes swarmkit's errors on
NAME_RE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?$")

UPDATE_DEFAULTS = {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000,
                   "MaxFailureRatio": 0, "Order": "stop-first"}
RESTART_DEFAULTS = {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0}
STOP_GRACE_DEFAULT = 10_000_000_000


def validate_name(name: Any, path: str = "Name") -> None:
    name = string(name, path)
    if name and not NAME_RE.match(name):
        raise SpecError(f"invalid {path}: {name!r} must be valid as a DNS name component "
                        "(letters, digits, '-', '_', '.'; at most 63 characters)")


def validate_service_spec(spec: Any) -> None:
    spec = field_map(spec, "ServiceSpec", SERVICE_KEYS)
    validate_name(spec.get("Name", ""))
    string_map(spec.get("Labels"), "Labels")
    _validate_task_template(spec.get("TaskTemplate"), "TaskTemplate")
    _validate_mode(spec.get("Mode"))
    _validate_update_config(spec.get("UpdateConfig"), "UpdateConfig", ("continue", "pause", "rollback"))
    _validate_update_config(spec.get("RollbackConfig"), "RollbackConfig", ("continue", "pause"))
    _validate_networks(spec.get("Networks"), "Networks")
    _validate_endpoint(spec.get("EndpointSpec"))


def _validate_task_template(value: Any, path: str) -> None:
    if value is None:
        raise SpecError(f"invalid {path}: a task template is required")
    tmpl = field_map(value, path, TASK_KEYS)
    container = field_map(tmpl.get("ContainerSpec"), f"{path}.ContainerSpec", CONTAINER_KEYS)
    if tmpl.get("ContainerSpec") is None or not container.get("Image"):
        raise SpecError(f"invalid {path}.ContainerSpec.Image: an image reference must be provided")
    _validate_container(container, f"{path}.ContainerSpec")
    if tmpl.get("ForceUpdate") is not None:
        integer(tmpl["ForceUpdate"], f"{path}.ForceUpdate")
    if tmpl.get("Runtime") is not None:
        string(tmpl["Runtime"], f"{path}.Runtime")
    plugin = field_map(tmpl.get("PluginSpec"), f"{path}.PluginSpec")
    typed_fields(plugin, f"{path}.PluginSpec", {"Name": str, "Remote": str, "Disabled": bool})
    string_list(plugin.get("Env"), f"{path}.PluginSpec.Env")
    for i, privilege in enumerate(object_list(plugin.get("Privileges"), f"{path}.PluginSpec.Privileges")):
        typed_fields(privilege, f"{path}.PluginSpec.Privileges[{i}]", {"Name": str, "Description": str})
        string_list(privilege.get("Value"), f"{path}.PluginSpec.Privileges[{i}].Value")
    typed_fields(field_map(tmpl.get("NetworkAttachmentSpec"), f"{path}.NetworkAttachmentSpec"),
                 f"{path}.NetworkAttachmentSpec", {"ContainerID": str})
    driver(tmpl.get("LogDriver"), f"{path}.LogDriver")
    _validate_resources(tmpl.get("Resources"), f"{path}.Resources")
    _validate_restart(tmpl.get("RestartPolicy"), f"{path}.RestartPolicy")
    _validate_placement(tmpl.get("Placement"), f"{path}.Placement")
    _validate_networks(tmpl.get("Networks"), f"{path}.Networks")


def _validate_container(container: dict[str, Any], cpath: str) -> None:
    """Every field the executor reads has the JSON type Docker gives it (null is "not set")."""
    string(container["Image"], f"{cpath}.Image")
    for key in ("Command", "Args", "Env", "Groups", "Hosts", "CapabilityAdd", "CapabilityDrop"):
        string_list(container.get(key), f"{cpath}.{key}")
    for key in ("Hostname", "Dir", "User", "StopSignal", "Isolation"):
        if container.get(key) is not None:
            string(container[key], f"{cpath}.{key}")
    for key in ("TTY", "OpenStdin", "ReadOnly", "Init"):
        if container.get(key) is not None:
            boolean(container[key], f"{cpath}.{key}")
    if container.get("OomScoreAdj") is not None:
        integer(container["OomScoreAdj"], f"{cpath}.OomScoreAdj", minimum=-1000, maximum=1000)
    string_map(container.get("Labels"), f"{cpath}.Labels")
    string_map(container.get("Sysctls"), f"{cpath}.Sysctls")
    _validate_privileges(container.get("Privileges"), f"{cpath}.Privileges")
    dns = field_map(container.get("DNSConfig"), f"{cpath}.DNSConfig", frozenset({"Nameservers", "Search", "Options"}))
    for key in ("Nameservers", "Search", "Options"):
        string_list(dns.get(key), f"{cpath}.DNSConfig.{key}")
    if container.get("StopGracePeriod") is not None:
        duration(container["StopGracePeriod"], f"{cpath}.StopGracePeriod")
    health = container.get("Healthcheck", container.get("HealthCheck"))
    health = field_map(health, f"{cpath}.Healthcheck")
    string_list(health.get("Test"), f"{cpath}.Healthcheck.Test")
    for key in HEALTH_DURATIONS:
        if health.get(key) is not None:
            duration(health[key], f"{cpath}.Healthcheck.{key}")
    if health.get("Retries") is not None:
        integer(health["Retries"], f"{cpath}.Healthcheck.Retries")
    for i, mount in enumerate(object_list(container.get("Mounts"), f"{cpath}.Mounts")):
        choice(mount.get("Type", "volume"), f"{cpath}.Mounts[{i}].Type",
               ("bind", "volume", "tmpfs", "npipe", "cluster", "image"))
        if not mount.get("Target") or not isinstance(mount["Target"], str):
            raise SpecError(f"invalid {cpath}.Mounts[{i}].Target: a target path is required")
        if mount.get("Source") is not None:
            string(mount["Source"], f"{cpath}.Mounts[{i}].Source")
        _validate_mount_options(mount, f"{cpath}.Mounts[{i}]")
    for key, id_key, name_key in (("Secrets", "SecretID", "SecretName"), ("Configs", "ConfigID", "ConfigName")):
        for i, ref in enumerate(object_list(container.get(key), f"{cpath}.{key}")):
            for name in (id_key, name_key):
                if ref.get(name) is not None:
                    string(ref[name], f"{cpath}.{key}[{i}].{name}")
            target = field_map(ref.get("File"), f"{cpath}.{key}[{i}].File")
            for name in ("Name", "UID", "GID"):
                if target.get(name) is not None:
                    string(target[name], f"{cpath}.{key}[{i}].File.{name}")
            if target.get("Mode") is not None:
                integer(target["Mode"], f"{cpath}.{key}[{i}].File.Mode", maximum=2**32 - 1)   # an os.FileMode (uint32)
    for i, ulimit in enumerate(object_list(container.get("Ulimits"), f"{cpath}.Ulimits")):
        string(ulimit.get("Name"), f"{cpath}.Ulimits[{i}].Name")
        typed_fields(ulimit, f"{cpath}.Ulimits[{i}]", {"Soft": int, "Hard": int})


def _validate_privileges(value: Any, path: str) -> None:
    privileges = field_map(value, path)
    typed_fields(privileges, path, {"NoNewPrivileges": bool})
    parts: list[tuple[str, dict[str, type]]] = [
        ("CredentialSpec", {"Config": str, "File": str, "Registry": str}),
        ("SELinuxContext", {"Disable": bool, "User": str, "Role": str, "Type": str, "Level": str}),
        ("Seccomp", {"Mode": str, "Profile": str}),
        ("AppArmor", {"Mode": str})]
    for key, types in parts:
        typed_fields(field_map(privileges.get(key), f"{path}.{key}"), f"{path}.{key}", types)


def _validate_mount_options(mount: dict[str, Any], path: str) -> None:
    typed_fields(mount, path, {"Source": str, "ReadOnly": bool, "Consistency": str})
    typed_fields(field_map(mount.get("BindOptions"), f"{path}.BindOptions"), f"{path}.BindOptions",
                 {"Propagation": str, "NonRecursive": bool, "CreateMountpoint": bool, "ReadOnlyNonRecursive": bool,
                  "ReadOnlyForceRecursive": bool})
    volume = field_map(mount.get("VolumeOptions"), f"{path}.VolumeOptions")
    typed_fields(volume, f"{path}.VolumeOptions", {"NoCopy": bool, "Subpath": str})
    string_map(volume.get("Labels"), f"{path}.VolumeOptions.Labels")
    driver(volume.get("DriverConfig"), f"{path}.VolumeOptions.DriverConfig")
    typed_fields(field_map(mount.get("TmpfsOptions"), f"{path}.TmpfsOptions"), f"{path}.TmpfsOptions",
                 {"SizeBytes": int, "Mode": int})
    typed_fields(field_map(mount.get("ImageOptions"), f"{path}.ImageOptions"), f"{path}.ImageOptions",
                 {"Subpath": str})
    field_map(mount.get("ClusterOptions"), f"{path}.ClusterOptions")


def _validate_resources(value: Any, path: str) -> None:
    res = field_map(value, path, RESOURCE_KEYS)
    limits = field_map(res.get("Limits"), f"{path}.Limits", frozenset({"NanoCPUs", "MemoryBytes", "Pids"}))
    reserve = field_map(res.get("Reservations"), f"{path}.Reservations",
                        frozenset({"NanoCPUs", "MemoryBytes", "GenericResources"}))
    for part, where in ((limits, "Limits"), (reserve, "Reservations")):
        for key in ("NanoCPUs", "MemoryBytes", "Pids"):
            if part.get(key) is not None:
                integer(part[key], f"{path}.{where}.{key}")
    generic = object_list(reserve.get("GenericResources"), f"{path}.Reservations.GenericResources")
    for i, resource in enumerate(generic):
        where = f"{path}.Reservations.GenericResources[{i}]"
        for key, value_type in (("NamedResourceSpec", str), ("DiscreteResourceSpec", int)):
            typed_fields(field_map(resource.get(key), f"{where}.{key}"), f"{where}.{key}",
                         {"Kind": str, "Value": value_type})


def _validate_restart(value: Any, path: str) -> None:
    policy = field_map(value, path, RESTART_KEYS)
    if policy.get("Condition") not in (None, ""):     # "" means the default, as Docker reads it
        choice(policy["Condition"], f"{path}.Condition", ("none", "on-failure", "any"))
    for key in ("Delay", "Window"):
        if policy.get(key) is not None:
            duration(policy[key], f"{path}.{key}")
    if policy.get("MaxAttempts") is not None:
        integer(policy["MaxAttempts"], f"{path}.MaxAttempts")


def _validate_placement(value: Any, path: str) -> None:
    placement = field_map(value, path, PLACEMENT_KEYS)
    for text in string_list(placement.get("Constraints"), f"{path}.Constraints"):
        try:
            parse_constraint(text)
        except SpecError as exc:
            raise SpecError(f"invalid {path}.Constraints: {exc.message}") from None
    for i, pref in enumerate(object_list(placement.get("Preferences"), f"{path}.Preferences")):
        spread = field_map(pref.get("Spread"), f"{path}.Preferences[{i}].Spread", frozenset({"SpreadDescriptor"}))
        # Any text, as Docker accepts it: the scheduler spreads over node.labels.<name> and
        # engine.labels.<name> and, as swarmkit's, ignores a descriptor it cannot read.
        desc = spread.get("SpreadDescriptor")
        if desc is not None and not isinstance(desc, str):
            raise SpecError(f"invalid {path}.Preferences[{i}].Spread.SpreadDescriptor: expected a string, "
                            f"not {desc!r}")
    if placement.get("MaxReplicas") is not None:
        integer(placement["MaxReplicas"], f"{path}.MaxReplicas")
    for i, plat in enumerate(object_list(placement.get("Platforms"), f"{path}.Platforms")):
        for key, value in field_map(plat, f"{path}.Platforms[{i}]", frozenset({"Architecture", "OS"})).items():
            if value is not None:
                string(value, f"{path}.Platforms[{i}].{key}")


def _validate_networks(value: Any, path: str) -> None:
    for i, net in enumerate(object_list(value, path)):
        field_map(net, f"{path}[{i}]", frozenset({"Target", "Aliases", "DriverOpts"}))
        if not isinstance(net.get("Target"), str) or not net["Target"]:
            raise SpecError(f"invalid {path}[{i}].Target: a network name or ID is required")
        string_list(net.get("Aliases"), f"{path}[{i}].Aliases")
        string_map(net.get("DriverOpts"), f"{path}[{i}].DriverOpts")


def _validate_mode(value: Any) -> None:
    if value is None:
        return
    mode = field_map(value, "Mode")
    keys = [k for k in mode if mode[k] is not None]
    unknown = [k for k in keys if k not in MODE_KEYS]
    if unknown:
        raise SpecError(f"invalid Mode: unknown mode {unknown[0]!r} (expected one of {', '.join(MODE_KEYS)})")
    if len(keys) > 1:
        raise SpecError(f"invalid Mode: only one mode may be given (got {', '.join(sorted(keys))})")
    if "Replicated" in mode:
        rep = field_map(mode["Replicated"], "Mode.Replicated", frozenset({"Replicas"}))
        if rep.get("Replicas") is not None:
            integer(rep["Replicas"], "Mode.Replicated.Replicas")
    if "Global" in mode:
        field_map(mode["Global"], "Mode.Global", frozenset())
    if "GlobalJob" in mode:
        field_map(mode["GlobalJob"], "Mode.GlobalJob", frozenset())
    if "ReplicatedJob" in mode:
        job = field_map(mode["ReplicatedJob"], "Mode.ReplicatedJob",
                        frozenset({"MaxConcurrent", "TotalCompletions"}))
        for key in ("MaxConcurrent", "TotalCompletions"):
            if job.get(key) is not None:
                integer(job[key], f"Mode.ReplicatedJob.{key}")


def _validate_update_config(value: Any, path: str, actions: tuple[str, ...]) -> None:
    cfg = field_map(value, path, UPDATE_KEYS)
    if cfg.get("Parallelism") is not None:
        integer(cfg["Parallelism"], f"{path}.Parallelism")
    for key in ("Delay", "Monitor"):
        if cfg.get(key) is not None:
            duration(cfg[key], f"{path}.{key}")
    if cfg.get("FailureAction") not in (None, ""):    # "" means the default (docker stack deploy sends it)
        choice(cfg["FailureAction"], f"{path}.FailureAction", actions)
    if cfg.get("Order") not in (None, ""):
        choice(cfg["Order"], f"{path}.Order", ("stop-first", "start-first"))
    ratio = cfg.get("MaxFailureRatio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1):
        raise SpecError(f"invalid {path}.MaxFailureRatio: must be a number from 0 to 1 (got {ratio!r})")


def _lower(value: Any) -> Any:
    """dockerd reads the endpoint's enums whatever their case (and shows them lower-case)."""
    return value.lower() if isinstance(value, str) else value


def _validate_endpoint(value: Any) -> None:
    """Field checks, then swarmkit's `validateEndpointSpec` with its texts: an ingress-mode port
    (published or not) cannot go with dnsrr, and no two ports publish one (port, protocol)."""
    endpoint = field_map(value, "EndpointSpec", ENDPOINT_KEYS)
    mode = choice(_lower(endpoint.get("Mode") or "vip"), "EndpointSpec.Mode", ("vip", "dnsrr"))
    ports = []
    for i, port in enumerate(object_list(endpoint.get("Ports"), "EndpointSpec.Ports")):
        path = f"EndpointSpec.Ports[{i}]"
        field_map(port, path, PORT_KEYS)
        if port.get("Name") is not None:
            string(port["Name"], f"{path}.Name")
        proto = choice(_lower(port.get("Protocol") or "tcp"), f"{path}.Protocol", ("tcp", "udp", "sctp"))
        publish_mode = choice(_lower(port.get("PublishMode") or "ingress"), f"{path}.PublishMode",
                              ("ingress", "host"))
        integer(port.get("TargetPort"), f"{path}.TargetPort", 1, 65535)
        published = integer(port.get("PublishedPort") or 0, f"{path}.PublishedPort", 0, 65535)
        ports.append((proto, publish_mode, published))
    seen: set[tuple[int, str]] = set()
    for proto, publish_mode, published in ports:
        if mode == "dnsrr" and publish_mode == "ingress":
            raise SpecError(f"{INVALID_ARGUMENT}EndpointSpec: port published with ingress mode can't be used "
                            "with dnsrr mode")
        if not published:
            continue
        if (published, proto) in seen:
            raise SpecError(f"{INVALID_ARGUMENT}EndpointSpec: duplicate published ports provided")
        seen.add((published, proto))


def normalize_service_spec(spec: dict[str, Any],
                           resolve_network: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The spec as the server stores it (validate first)."""
    out = drop_nulls(copy.deepcopy(spec))
    out.setdefault("Labels", {})
    mode = out.setdefault("Mode", {})
    if not any(k in mode for k in MODE_KEYS) or "Replicated" in mode:
        mode.setdefault("Replicated", {}).setdefault("Replicas", 1)
    tmpl = out["TaskTemplate"]
    tmpl.setdefault("ForceUpdate", 0)
    tmpl.setdefault("Runtime", "container")
    tmpl.setdefault("ContainerSpec", {}).setdefault("Isolation", "default")
    for cfg in (out.get("UpdateConfig"), out.get("RollbackConfig")):
        for key in ("FailureAction", "Order"):
            if cfg is not None and cfg.get(key) == "":         # "" stands for the default
                cfg[key] = UPDATE_DEFAULTS[key]
    restart = tmpl.get("RestartPolicy")
    if restart is not None and restart.get("Condition") == "":
        restart["Condition"] = RESTART_DEFAULTS["Condition"]
    endpoint = out.get("EndpointSpec")
    if endpoint is not None:
        endpoint["Mode"] = _lower(endpoint.get("Mode") or "vip")
        for port in endpoint.get("Ports") or []:
            port["Protocol"] = _lower(port.get("Protocol") or "tcp")
            port["PublishMode"] = _lower(port.get("PublishMode") or "ingress")
    if resolve_network is not None:
        for nets in (out.get("Networks"), tmpl.get("Networks")):
            for net in nets or []:
                net["Target"] = resolve_network(net["Target"])
    return out


def insert_service_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """What `GET /services/{id}?insertDefaults=true` shows: the stored spec plus defaults."""
    out = copy.deepcopy(spec)
    tmpl = out.setdefault("TaskTemplate", {})
    container = tmpl.setdefault("ContainerSpec", {})
    container.setdefault("StopGracePeriod", STOP_GRACE_DEFAULT)
    container.setdefault("DNSConfig", {})
    tmpl.setdefault("Resources", {})
    restart = tmpl.setdefault("RestartPolicy", {})
    for key, value in RESTART_DEFAULTS.items():
        restart.setdefault(key, value)
    tmpl.setdefault("Placement", {})
    for key in ("UpdateConfig", "RollbackConfig"):
        cfg = out.get(key) or {}
        for name, value in UPDATE_DEFAULTS.items():
            cfg.setdefault(name, value)
        out[key] = cfg
    return out
