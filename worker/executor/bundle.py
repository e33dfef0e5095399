"""The OCI runtime spec (config.json) of one container, built as pure data.

Theory of operation: `build_spec` takes a validated `ContainerConfig` plus everything the host
side has already decided (the mounted rootfs path, the cgroup path, the resolved user, the host
paths of volume sources, of the per-container /etc files and of the injected secret and config
files) and returns the config.json dict.
No I/O happens here, so tests check the spec field by field. Defaults follow what users of
Docker expect: its default capability set, masked and read-only /proc and /sys paths, a private
/dev with devpts, shm and mqueue, rprivate propagation for binds, and a new net namespace (runc
brings its `lo` up) unless a namespace path is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.executor.spec import DEFAULT_PATH, ContainerConfig, ResolvedUser

OCI_VERSION = "1.0.2"

DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]

READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

MAX_NOFILE = 1048576

_SHARED_PROPAGATIONS = ("shared", "rshared")
_SLAVE_PROPAGATIONS = ("slave", "rslave")


@dataclass(frozen=True)
class HostPaths:
    """Host-side facts the spec refers to, decided before the spec is built."""

    rootfs: str                                   # the mounted overlay
    cgroups_path: str                             # e.g. /shoal/<daemon-id>/<cid>
    etc_files: dict[str, str] = field(default_factory=dict)   # container path → host file
    volume_sources: dict[str, str] = field(default_factory=dict)  # mount target → host dir
    injected_files: dict[str, str] = field(default_factory=dict)  # container path → host file (ro)
    nofile_hard: int = 0       # the host's RLIMIT_NOFILE hard limit (a container cannot exceed it)


def _system_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]},
    ]


def _user_mounts(config: ContainerConfig, host: HostPaths) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in config.mounts:
        if m.type == "tmpfs":
            opts = ["nosuid", "nodev", "noexec"]
            if m.tmpfs_size:
                opts.append(f"size={m.tmpfs_size}")
            if m.tmpfs_mode:
                opts.append(f"mode={m.tmpfs_mode:o}")
            if m.read_only:
                opts.append("ro")
            out.append({"destination": m.target, "type": "tmpfs", "source": "tmpfs",
                        "options": opts})
            continue
        if m.type == "volume":
            source = host.volume_sources.get(m.target)
            if source is None:
                raise ValueError(f"no host directory decided for volume mounted at {m.target}")
            propagation = "rprivate"
        else:
            source = m.source
            propagation = m.propagation
        opts = ["rbind", propagation, "ro" if m.read_only else "rw"]
        out.append({"destination": m.target, "type": "bind", "source": source, "options": opts})
    return out


def _etc_mounts(host: HostPaths, user_targets: set[str]) -> list[dict[str, Any]]:
    return [
        {"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate", "rw"]}
        for dest, src in sorted(host.etc_files.items())
        if dest not in user_targets
    ]


def _injected_mounts(host: HostPaths) -> list[dict[str, Any]]:
    """Secrets and configs: read-only binds, after the user's mounts so that one lands inside a
    tmpfs or volume the user mounted on its parent directory."""
    return [
        {"destination": dest, "type": "bind", "source": src,
         "options": ["rbind", "rprivate", "ro", "nosuid", "nodev"]}
        for dest, src in sorted(host.injected_files.items())
    ]


def rootfs_propagation(config: ContainerConfig) -> str:
    """A shared bind needs a shared rootfs, a slave one a slave rootfs; otherwise rprivate."""
    props = {m.propagation for m in config.mounts if m.type == "bind"}
    if props & set(_SHARED_PROPAGATIONS):
        return "rshared"
    if props & set(_SLAVE_PROPAGATIONS):
        return "rslave"
    return "rprivate"


def rlimits(nofile_hard: int) -> list[dict[str, Any]]:
    """Open files raised to the host's hard limit (capped); nothing else set."""
    if nofile_hard <= 0:
        return []
    n = min(nofile_hard, MAX_NOFILE)
    return [{"type": "RLIMIT_NOFILE", "hard": n, "soft": n}]


def process_env(config: ContainerConfig, user: ResolvedUser) -> list[str]:
    env = list(config.env)
    keys = {e.partition("=")[0] for e in env}
    if "PATH" not in keys:
        env.insert(0, f"PATH={DEFAULT_PATH}")
    if "HOSTNAME" not in keys and config.hostname:
        env.append(f"HOSTNAME={config.hostname}")
    if "HOME" not in keys:
        env.append(f"HOME={user.home or '/'}")
    return env


def build_spec(config: ContainerConfig, user: ResolvedUser, host: HostPaths) -> dict[str, Any]:
    """The config.json for `config`; raises ValueError if a volume source is undecided."""
    user_mounts = _user_mounts(config, host)
    user_targets = {m["destination"] for m in user_mounts}
    caps = list(DEFAULT_CAPABILITIES)
    namespaces: list[dict[str, str]] = [
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
    ]
    namespaces.append({"type": "network", "path": config.netns_path} if config.netns_path
                      else {"type": "network"})
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    r = config.resources
    if r.memory_bytes > 0:
        resources["memory"] = {"limit": r.memory_bytes, "swap": r.memory_bytes}
    if r.cpu_quota() > 0:
        resources["cpu"] = {"quota": r.cpu_quota(), "period": r.CPU_PERIOD}
    if r.pids_limit > 0:
        resources["pids"] = {"limit": r.pids_limit}
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": config.tty,
            "user": {"uid": user.uid, "gid": user.gid,
                     **({"additionalGids": user.additional_gids} if user.additional_gids else {})},
            "args": list(config.args),
            "env": process_env(config, user),
            "cwd": config.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": rlimits(host.nofile_hard),
            "noNewPrivileges": False,
            "oomScoreAdj": 0,
        },
        "root": {"path": host.rootfs, "readonly": config.read_only},
        "hostname": config.hostname,
        "mounts": _system_mounts() + user_mounts + _etc_mounts(host, user_targets)
        + _injected_mounts(host),
        "annotations": {f"label.{k}": v for k, v in sorted(config.labels.items())}
        | {"shoal.name": config.name},
        "linux": {
            "cgroupsPath": host.cgroups_path,
            "resources": resources,
            "namespaces": namespaces,
            "rootfsPropagation": rootfs_propagation(config),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }


def hosts_file(hostname: str, extra: list[str]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [" ".join(e.split()) for e in extra]
    if hostname and not any(hostname in e.split()[1:] for e in extra):
        lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def resolv_conf(host_resolv: str, dns_servers: list[str]) -> str:
    """Explicit servers win; otherwise the host's file minus loopback nameservers, which a
    container in its own network namespace cannot reach."""
    if dns_servers:
        return "".join(f"nameserver {s}\n" for s in dns_servers)
    kept = []
    for line in host_resolv.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and (
                parts[1].startswith("127.") or parts[1] == "::1"):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n" if kept else ""
