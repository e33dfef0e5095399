"""From an Engine API `TaskSpec` and an image config to a `ContainerConfig` (pure).

Theory of operation: the task's ContainerSpec wins over the image config, field by field, the
way Docker merges them:
  - argv: `Command` replaces the image Entrypoint (and then the image Cmd is dropped); `Args`
    replaces the image Cmd;
  - Env: image Env, then the task's (a repeated key takes the task's value);
  - Dir/User/StopSignal/Hostname: the task's if set, else the image's, else the default;
  - Healthcheck: the task's fields over the image's; `["NONE"]` disables it; durations are
    nanoseconds in the API and seconds here;
  - Mounts, Resources.Limits, ReadOnly, Hosts, DNSConfig.Nameservers map one to one.
Bad input raises `ConfigError` naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.executor.spec import (
    ConfigError,
    ContainerConfig,
    Healthcheck,
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


def config_from_task(container_id: str, name: str, task_spec: dict[str, Any],
                     image_config: dict[str, Any], lower_dirs: list[Path], *,
                     hostname: str = "", netns_path: str = "",
                     labels: dict[str, str] | None = None) -> ContainerConfig:
    """`task_spec` is the Engine API TaskSpec (with `ContainerSpec` and `Resources`);
    `image_config` is the image's `config` object (Env, Entrypoint, Cmd, WorkingDir, User,
    Healthcheck, StopSignal, Labels); `lower_dirs` are its layers, top first."""
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
        extra_hosts=_str_list(spec.get("Hosts"), "ContainerSpec.Hosts"),
        dns_servers=_str_list(dns, "DNSConfig.Nameservers"),
    )
    config.validate()
    return config
