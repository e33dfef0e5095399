"""`POST /containers/create` as data: the request body plus the image's config → the container's
`ContainerConfig` and its create record (pure: no I/O, time is a parameter).

Theory of operation: the body's fields win over the image's, as dockerd merges them:
  - argv: `Entrypoint` replaces the image's (and then the image's Cmd is dropped unless `Cmd` is
    given); `Cmd` replaces the image's Cmd;
  - Env: the image's, then the body's (a repeated key takes the body's value); a TTY adds
    `TERM=xterm` unless set;
  - WorkingDir, User, StopSignal: the body's if set, else the image's, else the default;
  - `HostConfig.Binds` ("src:dst[:opts]": an absolute src is a bind mount, anything else a named
    volume), `HostConfig.Mounts` (the swarm Mount shape), `HostConfig.Tmpfs` and
    `Config.Volumes` (anonymous volumes) become mounts;
  - `HostConfig.NetworkMode`: "", default, bridge and none give the container a namespace of its
    own (a resolver callback can join it to a network's sandbox instead); host joins the
    daemon's namespace; any other name is a network the resolver must know (404 otherwise);
  - `HostConfig.Links` (`--link target:alias`): on a user-defined network they join the endpoint's
    links (an alias of the target that only this container resolves), as dockerd does there;
    legacy links on the default bridge (or with none/host/container: modes) are refused with a 400;
  - `HostConfig.RestartPolicy` "no" (or none) only: other policies are refused with a 400;
  - `AutoRemove`: the container is removed once it exits (worker.standalone.containers).
The record keeps what dockerd echoes in `docker inspect` (Config, HostConfig) and the creation
time, so a restarted daemon knows the container is standalone and what it was asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.executor.spec import ConfigError, ContainerConfig, MountSpec, Resources, merge_env
from worker.executor.taskspec import resolve_argv, resolve_healthcheck, resolve_mount

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
BIND_PROPAGATIONS = ("rprivate", "private", "rshared", "shared", "rslave", "slave")
ISOLATED_MODES = ("", "default", "bridge", "none")
RESTART_POLICIES = ("", "no")


class CreateError(Exception):
    """A create request dockerd would refuse: the HTTP status and its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Created:
    config: ContainerConfig
    record: dict[str, Any]            # Created, Config, HostConfig (see the module doc)
    bind_sources: list[str]           # host directories -v names: dockerd makes missing ones
    console_size: tuple[int, int] | None


def container_name(raw: str) -> str:
    """The name without its leading "/"; a 400 for what dockerd refuses."""
    if not NAME_RE.match(raw):
        raise CreateError(400, f"Invalid container name ({raw}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return raw.removeprefix("/")


def _strings(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CreateError(400, f"{what} must be a list of strings")
    return list(value)


def parse_bind(spec: str) -> MountSpec:
    """One `-v` entry: `src:dst[:opts]`, opts a comma list of ro/rw, a propagation, z/Z, nocopy."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise CreateError(400, f"invalid volume specification: '{spec}'")
    source, target = parts[0], parts[1]
    if not target.startswith("/"):
        raise CreateError(400, f"invalid volume specification: '{spec}': invalid mount config: "
                               "mount path must be absolute")
    read_only, propagation = False, "rprivate"
    for opt in (parts[2].split(",") if len(parts) == 3 and parts[2] else []):
        if opt in ("ro", "rw"):
            read_only = opt == "ro"
        elif opt in BIND_PROPAGATIONS:
            propagation = opt
        elif opt not in ("z", "Z", "nocopy"):
            raise CreateError(400, f"invalid volume specification: '{spec}': invalid mode: {opt}")
    if source.startswith("/"):
        return MountSpec(type="bind", source=source, target=target, read_only=read_only, propagation=propagation)
    if not VOLUME_NAME_RE.match(source):
        raise CreateError(400, f'create {source}: "{source}" includes invalid characters for a local volume '
                               "name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass "
                               "a host directory, use absolute path")
    return MountSpec(type="volume", source=source, target=target, read_only=read_only)


def _mounts(config: dict[str, Any], host: dict[str, Any]) -> list[MountSpec]:
    mounts = [parse_bind(b) for b in _strings(host.get("Binds"), "HostConfig.Binds") or []]
    specs = host.get("Mounts") or []
    if not isinstance(specs, list) or not all(isinstance(m, dict) for m in specs):
        raise CreateError(400, "HostConfig.Mounts must be a list of objects")
    for spec in specs:       # refused rather than mounting the whole volume
        if isinstance(spec.get("VolumeOptions"), dict) and spec["VolumeOptions"].get("Subpath"):
            raise CreateError(400, "invalid mount config: VolumeOptions.Subpath (a volume's subpath) is not "
                                   "supported by shoal's standalone containers")
    try:
        mounts += [resolve_mount(m) for m in specs]
    except (ConfigError, ValueError, TypeError, AttributeError) as e:
        raise CreateError(400, f"invalid mount config: {e}") from None
    tmpfs = host.get("Tmpfs") or {}
    if not isinstance(tmpfs, dict):
        raise CreateError(400, "HostConfig.Tmpfs must be an object")
    mounts += [MountSpec(type="tmpfs", target=str(t), tmpfs_size=_tmpfs_size(str(t), o))
               for t, o in tmpfs.items()]
    taken = {m.target for m in mounts}
    volumes = config.get("Volumes") or {}
    if not isinstance(volumes, dict):
        raise CreateError(400, "Config.Volumes must be an object")
    mounts += [MountSpec(type="volume", target=str(t)) for t in volumes if t not in taken]
    seen: set[str] = set()
    for m in mounts:
        if m.target in seen:
            raise CreateError(400, f"Duplicate mount point: {m.target}")
        seen.add(m.target)
        try:
            m.validate()
        except ConfigError as e:
            raise CreateError(400, f"invalid mount config: {e}") from None
    return mounts


def _extra_hosts(host: dict[str, Any]) -> list[str]:
    out = []
    for entry in _strings(host.get("ExtraHosts"), "HostConfig.ExtraHosts") or []:
        name, sep, address = entry.partition(":")
        if not sep or not name or not address:
            raise CreateError(400, f"invalid extra host: {entry}: must be host:ip")
        out.append(f"{address} {name}")
    return out


# What a standalone container cannot have yet: refused when asked for, never silently dropped.
UNSUPPORTED = (("PortBindings", "publishing ports (-p)"), ("PublishAllPorts", "publishing ports (-P)"),
               ("Privileged", "--privileged"), ("CapAdd", "--cap-add"), ("PidMode", "--pid"),
               ("VolumesFrom", "--volumes-from"), ("Devices", "--device"),
               ("IpcMode", "--ipc"), ("UTSMode", "--uts"), ("GroupAdd", "--group-add"), ("Init", "--init"),
               ("CpuShares", "--cpu-shares"), ("CpusetCpus", "--cpuset-cpus"), ("CpusetMems", "--cpuset-mems"),
               ("CpuQuota", "--cpu-quota"), ("CpuPeriod", "--cpu-period"), ("BlkioWeight", "--blkio-weight"),
               ("OomKillDisable", "--oom-kill-disable"), ("DeviceCgroupRules", "--device-cgroup-rule"),
               ("CgroupnsMode", "--cgroupns"), ("Runtime", "--runtime"), ("VolumeDriver", "--volume-driver"),
               ("ShmSize", "--shm-size"))
DEFAULT_MODES = ("", "default", "private", "shareable", "runc", "local")   # what UNSUPPORTED's keys may say
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
LOG_DRIVERS = ("", "json-file", "k8s-file", "none")   # none: `docker logs` refuses to read (dockerd)


def _tmpfs_size(target: str, options: Any) -> int:
    """The `size=` of a `--tmpfs /path:size=3M,...` option string (0: the kernel's default)."""
    for option in str(options or "").split(","):
        key, _, value = option.partition("=")
        if key == "size":
            number, unit = value.rstrip("bkmgBKMG"), value[len(value.rstrip("bkmgBKMG")):].lower().rstrip("b")
            if not number.isdigit() or unit not in SIZE_UNITS:
                raise CreateError(400, f"invalid tmpfs size for {target}: {value!r}")
            return int(number) * SIZE_UNITS[unit]
    return 0


def _log_config(host: dict[str, Any]) -> dict[str, Any]:
    """dockerd's echo of HostConfig.LogConfig; the log is always the shim's file (`docker logs`)."""
    config = host.get("LogConfig") or {}
    if not isinstance(config, dict):
        raise CreateError(400, "HostConfig.LogConfig must be an object")
    driver = config.get("Type") or ""
    if driver not in LOG_DRIVERS:
        raise CreateError(400, f"logger: no log driver named '{driver}' is registered")
    options = config.get("Config") or {}
    if not isinstance(options, dict):
        raise CreateError(400, "HostConfig.LogConfig.Config must be an object")
    return {"Type": "none" if driver == "none" else "json-file", "Config": options}


def _count(host: dict[str, Any], key: str, *, allow_negative: bool = False) -> int:
    value = host.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or (value < 0 and not allow_negative):
        raise CreateError(400, f"HostConfig.{key} must be a non-negative integer")
    return value


def legacy_links(host: dict[str, Any]) -> list[str]:
    """HostConfig.Links, which only a user-defined network can take (as its endpoint's links)."""
    links = host.get("Links") or []
    if not isinstance(links, list) or not all(isinstance(link, str) and link.strip(":/") for link in links):
        raise CreateError(400, 'HostConfig.Links must be a list of "container:alias" strings')
    mode = str(host.get("NetworkMode") or "")
    if not links:
        return []
    if mode == "host":
        raise CreateError(400, "conflicting options: host type networking can't be used with links. "
                               "This would result in undefined behavior")
    if mode.startswith("container:"):
        raise CreateError(400, "conflicting options: container type network can't be used with links. "
                               "This would result in undefined behavior")
    if mode in ISOLATED_MODES:
        raise CreateError(400, f"legacy links (--link, HostConfig.Links) are not supported on network "
                               f"{mode or 'default'!r} by shoal: put the containers on a user-defined network "
                               "(docker network create), where --link gives the target an alias")
    return list(links)


def with_links(endpoints: Any, mode: str, links: list[str], mac: Any = None) -> Any:
    """NetworkingConfig.EndpointsConfig with HostConfig.Links added to the `mode` network's entry
    (the docker CLI sends them in both places: each once), and the deprecated top-level
    Config.MacAddress moved there unless the entry has one, as dockerd does from API 1.44 on."""
    if mac is not None and not isinstance(mac, str):
        raise CreateError(400, "MacAddress must be a string")
    if mac and (mode in ("host", "none") or mode.startswith("container:")):
        raise CreateError(400, "conflicting options: mac-address and the network mode")
    if not links and not mac:
        return endpoints
    merged = dict(endpoints) if isinstance(endpoints, dict) else {}
    key = mode if mode in merged or len(merged) != 1 else next(iter(merged))
    entry = merged.get(key) or {}
    if not isinstance(entry, dict):
        raise CreateError(400, "EndpointConfig must be an object")
    given = entry.get("Links") or []
    if not isinstance(given, list):
        raise CreateError(400, 'EndpointConfig.Links must be a list of "container:alias" strings')
    merged[key] = {**entry, "Links": [*given, *(link for link in links if link not in given)] or None,
                   "MacAddress": entry.get("MacAddress") or mac or ""}
    return merged


def stray_endpoints(endpoints: Any, mode: str, attached: list[dict[str, Any]]) -> list[str]:
    """EndpointsConfig's keys that name no network the container was attached to (its
    NetworkMode's): refused rather than silently dropped (an unknown one is an error in dockerd)."""
    if not isinstance(endpoints, dict):
        return []
    known = {mode, *(str(e.get(k, "")) for e in attached for k in ("id", "name"))}
    if mode in ISOLATED_MODES:
        known.update(ISOLATED_MODES)
    return [key for key in endpoints if key not in known]


def _console_size(host: dict[str, Any]) -> tuple[int, int] | None:
    size = host.get("ConsoleSize")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) and n > 0 for n in size):
        return size[0], size[1]
    return None


def from_body(cid: str, name: str, body: Any, image_ref: str, image_config: dict[str, Any],
              lower_dirs: list[Path], *, now: float, netns_path: str) -> Created:
    """The container `body` (a create request) describes. `netns_path` is the namespace decided
    for its NetworkMode ("" = one of its own)."""
    if not isinstance(body, dict):
        raise CreateError(400, "container config must be a JSON object")
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        raise CreateError(400, "HostConfig must be a JSON object")
    restart = host.get("RestartPolicy") or {}
    policy = restart.get("Name") or "" if isinstance(restart, dict) else None
    if not isinstance(policy, str):
        raise CreateError(400, "HostConfig.RestartPolicy must be an object with a Name")
    if policy not in RESTART_POLICIES:
        raise CreateError(400, f"restart policy {policy!r} is not supported by shoal's standalone "
                               "containers (only \"no\"); run it as a swarm service to have it restarted")
    for key, flag in UNSUPPORTED:
        if host.get(key) and host.get(key) not in DEFAULT_MODES:
            raise CreateError(400, f"{flag} (HostConfig.{key}) is not supported by shoal's standalone containers")
    if host.get("CgroupnsMode") not in (None, "", "host"):      # the bundle makes no cgroup namespace
        raise CreateError(400, f"--cgroupns={host['CgroupnsMode']} (HostConfig.CgroupnsMode) is not supported by "
                               "shoal's standalone containers (only host)")
    links = legacy_links(host)
    auto_remove = bool(host.get("AutoRemove"))
    entrypoint = _strings(body.get("Entrypoint"), "Entrypoint")
    cmd = _strings(body.get("Cmd"), "Cmd")
    image = image_config or {}
    try:
        args = resolve_argv({"Command": entrypoint, "Args": cmd}, image)
    except ConfigError as e:
        raise CreateError(400, str(e)) from None
    if not args:
        raise CreateError(400, "No command specified")
    tty, open_stdin = bool(body.get("Tty")), bool(body.get("OpenStdin"))
    env_given = _strings(body.get("Env"), "Env") or []
    for entry in env_given:
        if entry.startswith("=") or not entry:
            raise CreateError(400, f"invalid environment variable: {entry}")
    # "KEY" without a value is kept as given (inspect shows it) but sets nothing, as with dockerd
    echoed_env = merge_env(image.get("Env") or [], [e for e in env_given if "=" in e]) \
        + [e for e in env_given if "=" not in e]
    env = [e for e in echoed_env if "=" in e]
    if tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
        echoed_env.append("TERM=xterm")
    for key in ("User", "Hostname", "Domainname", "StopSignal", "WorkingDir"):
        if not isinstance(body.get(key) or "", str):
            raise CreateError(400, f"{key} must be a string")
    cwd = body.get("WorkingDir") or image.get("WorkingDir") or "/"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise CreateError(400, f"the working directory '{cwd}' is invalid, it needs to be an absolute path")
    stop_timeout = body.get("StopTimeout")
    if stop_timeout is not None and (not isinstance(stop_timeout, int) or stop_timeout < -1):
        raise CreateError(400, "StopTimeout must be a number of seconds")
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise CreateError(400, "Labels must map names to strings")
    given_check = body.get("Healthcheck")
    if given_check is not None and not isinstance(given_check, dict):
        raise CreateError(400, "Healthcheck must be an object")
    try:     # `--health-cmd` and co. over the image's HEALTHCHECK, as for a service's tasks
        healthcheck = resolve_healthcheck(given_check, image.get("Healthcheck"))
    except ConfigError as e:
        raise CreateError(400, str(e)) from None
    mounts = _mounts(body, host)
    resources = Resources(memory_bytes=_count(host, "Memory"), nano_cpus=_count(host, "NanoCpus"),
                          pids_limit=max(0, _count(host, "PidsLimit", allow_negative=True)))
    if resources.memory_bytes and resources.memory_bytes < 6 * 1024 * 1024:
        raise CreateError(400, "Minimum memory limit allowed is 6MB")
    config = ContainerConfig(
        id=cid, name=name, lower_dirs=list(lower_dirs), args=args, env=env, cwd=cwd,
        user=str(body.get("User") or image.get("User") or ""), hostname=str(body.get("Hostname") or ""),
        mounts=mounts, resources=resources,
        stop_signal=str(body.get("StopSignal") or image.get("StopSignal") or "SIGTERM"),
        stop_grace=float(stop_timeout) if stop_timeout is not None and stop_timeout >= 0 else 10.0,
        labels={**(image.get("Labels") or {}), **labels}, netns_path=netns_path,
        read_only=bool(host.get("ReadonlyRootfs")), extra_hosts=_extra_hosts(host),
        dns_servers=_strings(host.get("Dns"), "HostConfig.Dns") or [], image=image_ref,
        tty=tty, stdin=open_stdin, healthcheck=healthcheck)
    try:
        config.validate()
    except ConfigError as e:
        raise CreateError(400, str(e)) from None
    echoed_config = {
        "Hostname": config.hostname or cid[:12], "Domainname": str(body.get("Domainname") or ""),
        "User": config.user, "AttachStdin": bool(body.get("AttachStdin")),
        "AttachStdout": bool(body.get("AttachStdout")), "AttachStderr": bool(body.get("AttachStderr")),
        "Tty": tty, "OpenStdin": open_stdin, "StdinOnce": bool(body.get("StdinOnce")), "Env": echoed_env,
        "Cmd": cmd if cmd is not None else (None if entrypoint else image.get("Cmd")),
        "Entrypoint": entrypoint if entrypoint is not None else image.get("Entrypoint"),
        "Image": image_ref, "WorkingDir": cwd, "Labels": config.labels,
        "Volumes": body.get("Volumes") or None,
    }
    if given_check or image.get("Healthcheck"):
        echoed_config["Healthcheck"] = given_check or image.get("Healthcheck")
    binds = _strings(host.get("Binds"), "HostConfig.Binds")
    echoed_host: dict[str, Any] = {
        "Binds": binds,
        "NetworkMode": str(host.get("NetworkMode") or "default"), "AutoRemove": auto_remove,
        "Links": links or None, "Runtime": "runc", "CgroupnsMode": "host",
        "RestartPolicy": {"Name": policy or "no", "MaximumRetryCount": 0},
        "ExtraHosts": _strings(host.get("ExtraHosts"), "HostConfig.ExtraHosts"),
        "LogConfig": _log_config(host), "Tmpfs": host.get("Tmpfs") or None,
        "Isolation": str(host.get("Isolation") or ""),
        "MemorySwap": _count(host, "MemorySwap", allow_negative=True),
        "MemorySwappiness": host.get("MemorySwappiness") if isinstance(host.get("MemorySwappiness"), int) else None,
    }
    record = {"Created": now, "Config": echoed_config, "HostConfig": echoed_host}
    sources = [m.source for m in mounts if m.type == "bind" and any(b.split(":")[0] == m.source for b in binds or [])]
    return Created(config, record, sources, _console_size(host))


def labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    """The `label` filters of prune: `k`, `k=v`, and their negations `k!=`, `k!=v`."""
    for want in wanted:
        negate = "!=" in want
        key, _, value = want.partition("!=" if negate else "=")
        present = key in labels and (not value or labels[key] == value)
        if present == negate:
            return False
    return True
