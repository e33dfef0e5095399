"""Turning `shoal service create/update` flags into a ServiceSpec (pure: no I/O).

Theory of operation: every flag value is parsed by a small function that raises `FlagError`
naming the flag and the bad text (the command prints it as one line and exits 1). `create`
builds a spec from nothing; `update` applies the same scalar flags to the current spec, plus the
`--*-add/--*-rm` list edits. Flags not given are None and leave the spec alone.

Units: durations as Go writes them (`500ms`, `10s`, `1m30s`, `1h`), sizes with binary suffixes
(`64M`, `1G`, `512k`, bytes without one), CPUs as decimals (`0.5`) -> NanoCPUs.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from decimal import Decimal, InvalidOperation
from typing import Any

_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                   "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?$", re.IGNORECASE)


class FlagError(ValueError):
    """A flag's value is unusable; the message names the flag."""


def parse_duration(text: str, flag: str) -> int:
    """Go duration syntax -> nanoseconds."""
    raw = text.strip()
    if raw in ("0", ""):
        if raw == "":
            raise FlagError(f"invalid argument {text!r} for {flag}: expected a duration such as 10s or 1m30s")
        return 0
    pos, total = 0, Decimal(0)
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(raw) or pos == 0:
        raise FlagError(f"invalid argument {text!r} for {flag}: expected a duration such as 500ms, 10s or 1m30s")
    return int(total)


def parse_size(text: str, flag: str) -> int:
    """`64M`, `1G`, `512k`, `100` (bytes) -> bytes, binary multiples."""
    match = _SIZE.match(text.strip())
    if not match:
        raise FlagError(f"invalid argument {text!r} for {flag}: expected a size such as 64M or 1G")
    power = " kmgtp".index(match.group(2).lower() or " ")
    return int(Decimal(match.group(1)) * (1024 ** power))


def parse_cpus(text: str, flag: str) -> int:
    """`0.5` -> 500000000 NanoCPUs."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise FlagError(f"invalid argument {text!r} for {flag}: expected a number of CPUs such as 0.5") from None
    if value < 0 or not value.is_finite():
        raise FlagError(f"invalid argument {text!r} for {flag}: must not be negative")
    return int(value * 1_000_000_000)


def parse_ratio(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FlagError(f"invalid argument {text!r} for {flag}: expected a number from 0 to 1") from None
    if not 0 <= value <= 1:
        raise FlagError(f"invalid argument {text!r} for {flag}: must be from 0 to 1")
    return value


def parse_key_values(items: tuple[str, ...] | list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise FlagError(f"invalid argument {item!r} for {flag}: expected KEY=VALUE")
        out[key] = value
    return out


def _csv_fields(text: str, flag: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not key:
            raise FlagError(f"invalid argument {text!r} for {flag}: empty field")
        fields[key] = value.strip() if eq else "true"
    return fields


def parse_mount(text: str) -> dict[str, Any]:
    """`type=bind,source=/a,target=/b,readonly` -> a Mount."""
    fields = _csv_fields(text, "--mount")
    mount: dict[str, Any] = {"Type": fields.pop("type", "volume")}
    if mount["Type"] not in ("bind", "volume", "tmpfs"):
        raise FlagError(f"invalid argument {text!r} for --mount: type must be bind, volume or tmpfs")
    for key in ("source", "src"):
        if key in fields:
            mount["Source"] = fields.pop(key)
    for key in ("target", "dst", "destination"):
        if key in fields:
            mount["Target"] = fields.pop(key)
    for key in ("readonly", "ro"):
        if key in fields:
            mount["ReadOnly"] = fields.pop(key).lower() in ("true", "1", "yes")
    if "tmpfs-size" in fields:
        mount["TmpfsOptions"] = {"SizeBytes": parse_size(fields.pop("tmpfs-size"), "--mount tmpfs-size")}
    if fields:
        raise FlagError(f"invalid argument {text!r} for --mount: unknown field {next(iter(fields))!r}")
    if not mount.get("Target"):
        raise FlagError(f"invalid argument {text!r} for --mount: target is required")
    if mount["Type"] == "bind" and not mount.get("Source"):
        raise FlagError(f"invalid argument {text!r} for --mount: source is required for bind mounts")
    return mount


_LONG_PORT = re.compile(r"\w+=\w+(,\w+=\w+)*")   # the docker CLI's test for the long syntax
PUBLISH_FLAG = "-p, --publish"


def _uint16(text: str) -> int:
    """Go's strconv.ParseUint(text, 10, 16), with its error texts."""
    if not text or not text.isascii() or not text.isdigit():
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text)
    if value > 65535:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


def _port_range(text: str) -> tuple[int, int]:
    """`80` or `8000-8010` (docker's nat.ParsePortRange)."""
    if "-" not in text:
        value = _uint16(text)
        return value, value
    parts = text.split("-")
    start, end = _uint16(parts[0]), _uint16(parts[1])
    if end < start:
        raise ValueError(f"invalid range specified for port: {text}")
    return start, end


def _port(protocol: str, target: int, published: int, mode: str) -> dict[str, Any]:
    port: dict[str, Any] = {"Protocol": protocol, "TargetPort": target}
    if published:
        port["PublishedPort"] = published
    port["PublishMode"] = mode
    return port


def parse_ports(text: str, flag: str = PUBLISH_FLAG) -> list[dict[str, Any]]:
    """One `--publish` value as the docker CLI reads it (opts/swarmopts PortOpt): the long syntax
    `published=8080,target=80,protocol=udp,mode=host` (target mandatory), or the short one
    `[PUBLISHED:]TARGET[/PROTOCOL]`, where either side may be a range (`8000-8001:80-81`, or a
    range of published ports for one target). Mode ingress and protocol tcp by default; a host IP
    is refused. Errors read as the docker CLI's: `invalid argument "X" for "-p, --publish" flag: ...`."""

    def bad(reason: str) -> FlagError:
        return FlagError(f'invalid argument "{text}" for "{flag}" flag: {reason}')

    if _LONG_PORT.search(text):
        try:
            fields = next(csv.reader([text]))
        except csv.Error as exc:
            raise bad(str(exc)) from None
        values: dict[str, Any] = {"Protocol": "tcp", "TargetPort": 0, "PublishedPort": 0, "PublishMode": "ingress"}
        for field in fields:
            key, eq, value = field.lower().partition("=")
            if not eq or not key:
                raise bad(f"invalid field {field}")
            if key == "protocol":
                if value not in ("tcp", "udp", "sctp"):
                    raise bad(f"invalid protocol value {value}")
                values["Protocol"] = value
            elif key == "mode":
                if value not in ("ingress", "host"):
                    raise bad(f"invalid publish mode value {value}")
                values["PublishMode"] = value
            elif key in ("target", "published"):
                try:
                    values["TargetPort" if key == "target" else "PublishedPort"] = _uint16(value)
                except ValueError as exc:
                    raise bad(str(exc)) from None
            else:
                raise bad(f"invalid field key {key}")
        if not values["TargetPort"]:
            raise bad('missing mandatory field "target"')
        return [_port(values["Protocol"], values["TargetPort"], values["PublishedPort"], values["PublishMode"])]

    parts = text.split(":")
    container = parts[-1]
    ip, host = ("", "") if len(parts) == 1 else ("", parts[0]) if len(parts) == 2 else (":".join(parts[:-2]), parts[-2])
    pieces = container.split("/")   # docker's nat.SplitProtoPort
    if not container or not pieces[0]:
        protocol, container = "", ""
    elif len(pieces) == 1 or not pieces[1]:
        protocol, container = "tcp", pieces[0]
    else:
        protocol, container = pieces[1], pieces[0]
    if ip:
        address = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise bad(f"invalid IP address: {ip}") from None
    if not container:
        raise bad(f"no port specified: {text}<empty>")
    try:
        start, end = _port_range(container)
    except ValueError:
        raise bad(f"invalid containerPort: {container}") from None
    host_start = host_end = 0
    if host:
        try:
            host_start, host_end = _port_range(host)
        except ValueError:
            raise bad(f"invalid hostPort: {host}") from None
        if end - start != host_end - host_start and end != start:
            raise bad(f"invalid ranges specified for container and host Ports: {container} and {host}")
    if protocol.lower() not in ("tcp", "udp", "sctp"):
        raise bad(f"invalid proto: {protocol}")
    if ip:
        raise bad("hostip is not supported")
    out: list[dict[str, Any]] = []
    for i in range(end - start + 1):
        if not host:
            published = [0]
        elif start == end and host_start != host_end:
            published = list(range(host_start, host_end + 1))   # one target, a range of published ports
        else:
            published = [host_start + i]
        out.extend(_port(protocol.lower(), start + i, number, "ingress") for number in published)
    return out


def port_key(port: dict[str, Any]) -> str:
    """The docker CLI's key of a port: `published:target/protocol/mode`."""
    return (f"{port.get('PublishedPort') or 0}:{port.get('TargetPort') or 0}/{port.get('Protocol') or ''}"
            f"/{port.get('PublishMode') or ''}")


def update_ports(current: list[dict[str, Any]] | None, add: list[dict[str, Any]],
                 remove: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`service update --publish-add/--publish-rm` as the docker CLI does them: the current ports
    (one per key), less those whose protocol, target port and mode match one to remove (tcp and
    ingress when not given), plus the added ones not there yet, sorted by key."""

    def same(port: dict[str, Any], other: dict[str, Any]) -> bool:
        return ((port.get("Protocol") or "tcp") == (other.get("Protocol") or "tcp")
                and port.get("TargetPort") == other.get("TargetPort")
                and (port.get("PublishMode") or "ingress") == (other.get("PublishMode") or "ingress"))

    existing: dict[str, dict[str, Any]] = {}
    for port in current or []:
        existing.setdefault(port_key(port), port)
    ports = [p for p in existing.values() if not any(same(p, r) for r in remove)]
    ports += [p for p in add if port_key(p) not in existing]
    return sorted(ports, key=port_key)


def parse_file_ref(text: str, flag: str) -> dict[str, Any]:
    """`name` or `source=name,target=path,uid=0,gid=0,mode=0444` -> {source, File}."""
    fields = _csv_fields(text, flag) if "=" in text else {"source": text}
    source = fields.get("source") or fields.get("src")
    if not source:
        raise FlagError(f"invalid argument {text!r} for {flag}: source is required")
    try:
        mode = int(fields.get("mode", "0444"), 8)
    except ValueError:
        raise FlagError(f"invalid argument {text!r} for {flag}: mode must be octal such as 0444") from None
    return {"source": source, "File": {"Name": fields.get("target") or source, "UID": fields.get("uid", "0"),
                                       "GID": fields.get("gid", "0"), "Mode": mode}}


def parse_preference(text: str) -> dict[str, Any]:
    strategy, _, descriptor = text.partition("=")
    if strategy != "spread" or not descriptor:
        raise FlagError(f"invalid argument {text!r} for --placement-pref: expected spread=node.labels.NAME")
    return {"Spread": {"SpreadDescriptor": descriptor}}


def image_with_tag(image: str) -> str:
    """Untagged images get `:latest` (a digest counts as a tag)."""
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last or "@" in last else f"{image}:latest"


# -- applying scalar flags ----------------------------------------------------------------------
def _sub(spec: dict[str, Any], *path: str) -> dict[str, Any]:
    node = spec
    for key in path:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        node = child
    return node


def apply_scalar_flags(spec: dict[str, Any], opts: dict[str, Any]) -> None:
    """Set every scalar flag that was given (not None) on `spec`."""
    tmpl = _sub(spec, "TaskTemplate")
    container = _sub(tmpl, "ContainerSpec")
    if opts.get("replicas") is not None:
        if opts["replicas"] < 0:
            raise FlagError(f"invalid argument {opts['replicas']} for --replicas: must not be negative")
        mode = spec.setdefault("Mode", {})
        if "Global" in mode:
            raise FlagError("--replicas can only be used with replicated mode")
        mode.setdefault("Replicated", {})["Replicas"] = opts["replicas"]
    for flag, where, parse in (("limit_cpu", ("Limits", "NanoCPUs"), parse_cpus),
                             ("limit_memory", ("Limits", "MemoryBytes"), parse_size),
                             ("reserve_cpu", ("Reservations", "NanoCPUs"), parse_cpus),
                             ("reserve_memory", ("Reservations", "MemoryBytes"), parse_size)):
        if opts.get(flag) is not None:
            _sub(tmpl, "Resources", where[0])[where[1]] = parse(opts[flag], "--" + flag.replace("_", "-"))
    for flag, key in (("restart_condition", "Condition"), ("restart_max_attempts", "MaxAttempts")):
        if opts.get(flag) is not None:
            _sub(tmpl, "RestartPolicy")[key] = opts[flag]
    for flag, key in (("restart_delay", "Delay"), ("restart_window", "Window")):
        if opts.get(flag) is not None:
            _sub(tmpl, "RestartPolicy")[key] = parse_duration(opts[flag], "--" + flag.replace("_", "-"))
    for prefix, section in (("update", "UpdateConfig"), ("rollback", "RollbackConfig")):
        fields = {"parallelism": ("Parallelism", None), "delay": ("Delay", parse_duration),
                  "failure_action": ("FailureAction", None), "order": ("Order", None),
                  "monitor": ("Monitor", parse_duration), "max_failure_ratio": ("MaxFailureRatio", parse_ratio)}
        for name, (key, parse_fn) in fields.items():
            value = opts.get(f"{prefix}_{name}")
            if value is not None:
                flag = f"--{prefix}-{name.replace('_', '-')}"
                _sub(spec, section)[key] = parse_fn(value, flag) if parse_fn else value
    if opts.get("stop_grace_period") is not None:
        container["StopGracePeriod"] = parse_duration(opts["stop_grace_period"], "--stop-grace-period")
    for flag, key in (("stop_signal", "StopSignal"), ("workdir", "Dir"), ("user", "User"),
                      ("hostname", "Hostname")):
        if opts.get(flag) is not None:
            container[key] = opts[flag]
    if opts.get("entrypoint") is not None:
        container["Command"] = opts["entrypoint"].split() if opts["entrypoint"] else []
    _apply_health(container, opts)


def _apply_health(container: dict[str, Any], opts: dict[str, Any]) -> None:
    given = [k for k in ("health_cmd", "health_interval", "health_timeout", "health_retries",
                         "health_start_period") if opts.get(k) is not None]
    if opts.get("no_healthcheck"):
        if given:
            raise FlagError("--no-healthcheck conflicts with --health-* options")
        container["Healthcheck"] = {"Test": ["NONE"]}
        return
    if not given:
        return
    health = container.setdefault("Healthcheck", {})
    if health.get("Test") == ["NONE"]:
        health.pop("Test")
    if opts.get("health_cmd") is not None:
        health["Test"] = ["CMD-SHELL", opts["health_cmd"]]
    for flag, key in (("health_interval", "Interval"), ("health_timeout", "Timeout"),
                      ("health_start_period", "StartPeriod")):
        if opts.get(flag) is not None:
            health[key] = parse_duration(opts[flag], "--" + flag.replace("_", "-"))
    if opts.get("health_retries") is not None:
        health["Retries"] = opts["health_retries"]


def new_service_spec(name: str, image: str, args: tuple[str, ...], mode: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "Name": name, "Labels": {},
        "TaskTemplate": {"ContainerSpec": {"Image": image_with_tag(image)}, "ForceUpdate": 0},
        "Mode": {"Global": {}} if mode == "global" else {"Replicated": {}},
        "EndpointSpec": {"Mode": "vip"},
    }
    if name == "":
        del spec["Name"]
    if args:
        spec["TaskTemplate"]["ContainerSpec"]["Args"] = list(args)
    return spec
