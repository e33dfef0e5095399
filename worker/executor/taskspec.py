"""From an Engine API `TaskSpec` and an image config to a `ContainerConfig` (pure).

Theory of operation: the task's ContainerSpec wins over the image config, field by field, the
way Docker merges them:
  - argv: `Command` replaces the image Entrypoint (and then the image Cmd is dropped); `Args`
    replaces the image Cmd;
  - Env: image Env, then the task's (a repeated key takes the task's value);
  - Dir/User/StopSignal/Hostname: the task's if set, else the image's, else the default;
  - Healthcheck: the task's fields over the image's; `["NONE"]` disables it; durations are
    nanoseconds in the API and seconds here;
  - Mounts, Resources.Limits, ReadOnly, Hosts, DNSConfig.Nameservers map one to one;
  - Secrets and Configs become injected files (`resolve_injected_files`, given a lookup of the
    data the node was sent): a secret's relative `File.Name` lands under /run/secrets, a
    config's under /; an absolute one is used as is; UID/GID default to "0" and Mode to 0444.
Bad input raises `ConfigError` naming the field.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.executor.spec import (
    ConfigError,
    ContainerConfig,
    Healthcheck,
    InjectedFile,
    MountSpec,
    Resources,
    merge_env,
)

NS = 1_000_000_000
DEFAULT_STOP_GRACE = 10.0
DEFAULT_HEALTH_INTERVAL = 30.0
DEFAULT_HEALTH_TIMEOUT = 30.0
DEFAULT_HEALTH_RETRIES = 3


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what} must be a list of strings")
    return list(value)


def _seconds(value: Any, what: str, default: float) -> float:
    if value in (None, 0):
        return default
    if not isinstance(value, int) or value < 0:
        raise ConfigError(f"{what} must be a non-negative duration in nanoseconds")
    return value / NS


def resolve_argv(spec: dict[str, Any], image: dict[str, Any]) -> list[str]:
    command = _str_list(spec.get("Command"), "ContainerSpec.Command")
    args = _str_list(spec.get("Args"), "ContainerSpec.Args")
    if command:
        return command + args
    entrypoint = _str_list(image.get("Entrypoint"), "image Entrypoint")
    cmd = args or _str_list(image.get("Cmd"), "image Cmd")
    return entrypoint + cmd


def resolve_healthcheck(spec_hc: dict[str, Any] | None,
                        image_hc: dict[str, Any] | None) -> Healthcheck | None:
    merged: dict[str, Any] = dict(image_hc or {})
    for key, value in (spec_hc or {}).items():
        if value not in (None, 0, []):
            merged[key] = value
    test = _str_list(merged.get("Test"), "Healthcheck.Test")
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD":
        argv = test[1:]
    elif test[0] == "CMD-SHELL":
        if len(test) != 2:
            raise ConfigError("Healthcheck.Test CMD-SHELL takes exactly one command string")
        argv = ["/bin/sh", "-c", test[1]]
    else:
        raise ConfigError(f"Healthcheck.Test must start with NONE, CMD or CMD-SHELL, not {test[0]!r}")
    if not argv:
        raise ConfigError("Healthcheck.Test has no command")
    retries = merged.get("Retries") or DEFAULT_HEALTH_RETRIES
    if not isinstance(retries, int) or retries < 0:
        raise ConfigError("Healthcheck.Retries must be a non-negative integer")
    return Healthcheck(
        test=argv,
        interval=_seconds(merged.get("Interval"), "Healthcheck.Interval", DEFAULT_HEALTH_INTERVAL),
        timeout=_seconds(merged.get("Timeout"), "Healthcheck.Timeout", DEFAULT_HEALTH_TIMEOUT),
        retries=retries,
        start_period=_seconds(merged.get("StartPeriod"), "Healthcheck.StartPeriod", 0.0),
    )


def resolve_mount(m: dict[str, Any]) -> MountSpec:
    mtype = str(m.get("Type") or "volume").lower()
    target = m.get("Target") or ""
    if not isinstance(target, str) or not target:
        raise ConfigError("Mounts[].Target is required")
    bind = m.get("BindOptions") or {}
    vol = m.get("VolumeOptions") or {}
    tmpfs = m.get("TmpfsOptions") or {}
    if mtype == "volume" and (vol.get("DriverConfig") or {}).get("Name") not in (None, "", "local"):
        raise ConfigError(f"volume driver {vol['DriverConfig']['Name']!r} is not supported "
                          "(only local)")
    if mtype == "tmpfs" and m.get("Source"):
        raise ConfigError("Mounts[].Source must be empty for tmpfs")
    spec = MountSpec(
        type=mtype, target=target, source=str(m.get("Source") or ""),
        read_only=bool(m.get("ReadOnly")),
        propagation=str(bind.get("Propagation") or "rprivate"),
        tmpfs_size=int(tmpfs.get("SizeBytes") or 0), tmpfs_mode=int(tmpfs.get("Mode") or 0),
        volume_labels=dict(vol.get("Labels") or {}),
    )
    spec.validate()
    return spec


def resolve_resources(resources: dict[str, Any] | None) -> Resources:
    limits = (resources or {}).get("Limits") or {}
    out = Resources(memory_bytes=int(limits.get("MemoryBytes") or 0),
                    nano_cpus=int(limits.get("NanoCPUs") or 0),
                    pids_limit=int(limits.get("Pids") or 0))
    if out.memory_bytes and out.memory_bytes < 6 * 1024 * 1024:
        raise ConfigError("Resources.Limits.MemoryBytes must be at least 6 MiB")
    if min(out.memory_bytes, out.nano_cpus, out.pids_limit) < 0:
        raise ConfigError("Resources.Limits values must not be negative")
    return out


SECRETS_DIR = "/run/secrets"
DEFAULT_FILE_MODE = 0o444


class MissingDependency(ConfigError):
    """A secret or config the task refers to whose data this node does not have."""


# (kind, ID, name) → the data, or None when the node has none.
DependencyLookup = Callable[[str, str, str], bytes | None]


def injected_target(kind: str, file_name: str) -> str:
    """Where a secret's or config's `File.Name` lands: relative names under /run/secrets (a
    secret) or / (a config), absolute ones as they are. `..` components are refused."""
    if not file_name:
        raise ConfigError(f"{kind} target: File.Name is empty")
    if ".." in file_name.split("/"):
        raise ConfigError(f"{kind} target {file_name!r} must not contain '..'")
    if file_name.startswith("/"):
        target = file_name
    else:
        target = posixpath.join(SECRETS_DIR if kind == "secret" else "/", file_name)
    target = posixpath.normpath(target)
    if target in ("/", SECRETS_DIR) or "\0" in target:
        raise ConfigError(f"{kind} target {file_name!r} does not name a file")
    return target


def _file_id(value: Any, what: str) -> int:
    if value in (None, ""):
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a numeric ID, not {value!r}") from None
    if number < 0:
        raise ConfigError(f"{what} must not be negative")
    return number


def resolve_injected_files(spec: dict[str, Any], lookup: DependencyLookup) -> list[InjectedFile]:
    """ContainerSpec.Secrets and .Configs as files. A config reference with a `Runtime` target
    (a credential spec) is no file and is skipped. Data missing for a reference raises
    `MissingDependency` naming it."""
    out: list[InjectedFile] = []
    for kind, key, id_key, name_key in (("secret", "Secrets", "SecretID", "SecretName"),
                                        ("config", "Configs", "ConfigID", "ConfigName")):
        refs = spec.get(key) or []
        if not isinstance(refs, list):
            raise ConfigError(f"ContainerSpec.{key} must be a list")
        for ref in refs:
            if not isinstance(ref, dict):
                raise ConfigError(f"ContainerSpec.{key} entries must be objects")
            if ref.get("File") is None and ref.get("Runtime") is not None:
                continue
            obj_id, name = str(ref.get(id_key) or ""), str(ref.get(name_key) or "")
            if not obj_id:
                raise ConfigError(f"ContainerSpec.{key}: {kind} {name or '?'} has no {id_key}")
            label = f"{kind} {name or obj_id}"
            file = ref.get("File") or {}
            if not isinstance(file, dict):
                raise ConfigError(f"{label}: File must be an object")
            target = injected_target(kind, str(file.get("Name") or name or obj_id))
            mode = file.get("Mode")
            mode = DEFAULT_FILE_MODE if mode is None else mode
            if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
                raise ConfigError(f"{label}: File.Mode must be a file mode (0 to 0o7777), not {mode!r}")
            data = lookup(kind, obj_id, name)
            if data is None:
                raise MissingDependency(f"{label} (ID {obj_id}) is not available on this node")
            out.append(InjectedFile(target=target, data=data, uid=_file_id(file.get("UID"), f"{label}: File.UID"),
                                    gid=_file_id(file.get("GID"), f"{label}: File.GID"), mode=mode,
                                    source=label))
    return out


def config_from_task(container_id: str, name: str, task_spec: dict[str, Any],
                     image_config: dict[str, Any], lower_dirs: list[Path], *,
                     hostname: str = "", netns_path: str = "", resolv_conf: str = "",
                     sandbox_hosts: list[str] | None = None, labels: dict[str, str] | None = None,
                     files: list[InjectedFile] | None = None) -> ContainerConfig:
    """`task_spec` is the Engine API TaskSpec (with `ContainerSpec` and `Resources`);
    `image_config` is the image's `config` object (Env, Entrypoint, Cmd, WorkingDir, User,
    Healthcheck, StopSignal, Labels); `lower_dirs` are its layers, top first; `files` the
    task's secrets and configs (`resolve_injected_files`); `netns_path`, `resolv_conf` and
    `sandbox_hosts` come from the task's network sandbox."""
    spec = task_spec.get("ContainerSpec") or {}
    image = image_config or {}
    stop_grace = spec.get("StopGracePeriod")
    dns = (spec.get("DNSConfig") or {}).get("Nameservers")
    config = ContainerConfig(
        id=container_id,
        name=name,
        lower_dirs=list(lower_dirs),
        args=resolve_argv(spec, image),
        env=merge_env(_str_list(image.get("Env"), "image Env"),
                      _str_list(spec.get("Env"), "ContainerSpec.Env")),
        cwd=spec.get("Dir") or image.get("WorkingDir") or "/",
        user=spec.get("User") or image.get("User") or "",
        hostname=spec.get("Hostname") or hostname,
        mounts=[resolve_mount(m) for m in spec.get("Mounts") or []],
        resources=resolve_resources(task_spec.get("Resources")),
        stop_signal=spec.get("StopSignal") or image.get("StopSignal") or "SIGTERM",
        stop_grace=_seconds(stop_grace, "ContainerSpec.StopGracePeriod", DEFAULT_STOP_GRACE)
        if stop_grace != 0 else 0.0,
        healthcheck=resolve_healthcheck(spec.get("Healthcheck"), image.get("Healthcheck")),
        labels={**(image.get("Labels") or {}), **(spec.get("Labels") or {}), **(labels or {})},
        netns_path=netns_path,
        read_only=bool(spec.get("ReadOnly")),
        extra_hosts=[*_str_list(spec.get("Hosts"), "ContainerSpec.Hosts"), *(sandbox_hosts or [])],
        dns_servers=_str_list(dns, "DNSConfig.Nameservers"),
        resolv_conf=resolv_conf,
        files=list(files or []),
        image=str(spec.get("Image") or ""),
    )
    config.validate()
    return config
