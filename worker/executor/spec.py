"""What one container is: a plain, serialisable description the executor turns into an OCI bundle.

Theory of operation: a `ContainerConfig` carries everything already resolved (image layers as
overlay lower dirs, the final argv, env, cwd, user spec, mounts, limits, health check), so the
executor never consults the image store or the cluster. It round-trips through JSON
(`to_json`/`from_json`) because a restarted daemon re-adopts containers from what it persisted.
User specs ("name", "uid", "uid:gid", "name:group") are resolved against the container's own
/etc/passwd and /etc/group by the pure `resolve_user`. Injected files (a service's secrets and
configs) carry their bytes (base64 in JSON): the record lives on the executor's run tmpfs, as do
the files written from it, so their contents never reach the disk.
"""

from __future__ import annotations

import base64
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROPAGATIONS = ("rprivate", "private", "rshared", "shared", "rslave", "slave")
MOUNT_TYPES = ("bind", "volume", "tmpfs")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


class ConfigError(ValueError):
    """A container description that cannot be run; the message names the problem."""


@dataclass(frozen=True)
class MountSpec:
    """One mount. For `volume`, `source` is a volume name (empty: an anonymous volume)."""

    type: str
    target: str
    source: str = ""
    read_only: bool = False
    propagation: str = "rprivate"      # bind mounts only
    tmpfs_size: int = 0                # bytes; 0 = kernel default
    tmpfs_mode: int = 0                # e.g. 0o1777; 0 = default
    volume_labels: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.type not in MOUNT_TYPES:
            raise ConfigError(f"mount type {self.type!r} is not one of {', '.join(MOUNT_TYPES)}")
        if not self.target.startswith("/"):
            raise ConfigError(f"mount target {self.target!r} must be an absolute path")
        if self.type == "bind" and not self.source.startswith("/"):
            raise ConfigError(f"bind mount source {self.source!r} must be an absolute host path")
        if self.propagation not in PROPAGATIONS:
            raise ConfigError(
                f"mount propagation {self.propagation!r} is not one of {', '.join(PROPAGATIONS)}")


@dataclass(frozen=True)
class InjectedFile:
    """A file given to the container (a secret or a config): bind-mounted read-only at
    `target` from a copy the executor writes with this owner and mode."""

    target: str                # absolute path in the container
    data: bytes
    uid: int = 0
    gid: int = 0
    mode: int = 0o444
    source: str = ""           # what it is, for error texts: "secret db-password"

    def validate(self) -> None:
        what = self.source or f"injected file {self.target}"
        if not self.target.startswith("/"):
            raise ConfigError(f"{what}: target {self.target!r} must be an absolute path")
        if ".." in self.target.split("/"):
            raise ConfigError(f"{what}: target {self.target!r} must not contain '..'")
        if self.target.rstrip("/") == "":
            raise ConfigError(f"{what}: target must name a file, not /")
        if not 0 <= self.mode <= 0o7777:
            raise ConfigError(f"{what}: mode {self.mode:o} is not a file mode")
        if self.uid < 0 or self.gid < 0:
            raise ConfigError(f"{what}: uid and gid must not be negative")

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "data": base64.b64encode(self.data).decode("ascii"),
                "uid": self.uid, "gid": self.gid, "mode": self.mode, "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InjectedFile:
        return cls(target=data["target"], data=base64.b64decode(data["data"]), uid=int(data["uid"]),
                   gid=int(data["gid"]), mode=int(data["mode"]), source=str(data.get("source", "")))


@dataclass(frozen=True)
class Resources:
    memory_bytes: int = 0      # 0 = unlimited
    nano_cpus: int = 0         # 1e9 = one CPU; 0 = unlimited
    pids_limit: int = 0        # 0 = unlimited

    CPU_PERIOD = 100_000       # microseconds

    def cpu_quota(self) -> int:
        """The CFS quota (µs per `CPU_PERIOD`) for `nano_cpus`; 0 when unlimited."""
        if self.nano_cpus <= 0:
            return 0
        return max(1000, self.nano_cpus * self.CPU_PERIOD // 1_000_000_000)


@dataclass(frozen=True)
class Healthcheck:
    """`test` is the resolved argv run inside the container (CMD-SHELL already expanded)."""

    test: list[str]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


@dataclass(frozen=True)
class ContainerConfig:
    id: str
    name: str
    lower_dirs: list[Path]           # image layers, top first
    args: list[str]                  # entrypoint + cmd, resolved
    env: list[str] = field(default_factory=list)          # "KEY=value"
    cwd: str = "/"
    user: str = ""                   # "", "name", "uid", "uid:gid", "name:group"
    hostname: str = ""
    mounts: list[MountSpec] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    stop_signal: str = "SIGTERM"
    stop_grace: float = 10.0
    healthcheck: Healthcheck | None = None
    labels: dict[str, str] = field(default_factory=dict)
    netns_path: str = ""             # join this netns; "" = a new one with only lo
    read_only: bool = False
    extra_hosts: list[str] = field(default_factory=list)  # "ip name [name...]" lines for /etc/hosts
    dns_servers: list[str] = field(default_factory=list)  # empty: copy the host's resolv.conf
    resolv_conf: str = ""            # the whole /etc/resolv.conf from the task's sandbox (embedded DNS)
    files: list[InjectedFile] = field(default_factory=list)  # secrets and configs
    image: str = ""                  # the image reference it was made from (shown by docker ps)
    tty: bool = False                # a pseudo-terminal as stdio (the shim holds its master)
    stdin: bool = False              # stdin open: what attach clients send reaches the process
    # the networks it is attached to, for docker inspect: {"id", "name", "address": "10.0.1.5/24",
    # "aliases": [...]}, in order (the sandbox made the interfaces; this only describes them)
    networks: list[dict[str, Any]] = field(default_factory=list)

    def validate(self) -> None:
        if not _CID_RE.match(self.id) or self.id == "shims":
            raise ConfigError(f"container id {self.id!r} must match {_CID_RE.pattern} "
                              "and not be 'shims'")
        if not self.args:
            raise ConfigError(f"container {self.name or self.id}: no command (image has no "
                              "Entrypoint/Cmd and the task gives none)")
        if not self.lower_dirs:
            raise ConfigError(f"container {self.name or self.id}: no image layers")
        if not self.cwd.startswith("/"):
            raise ConfigError(f"working directory {self.cwd!r} must be an absolute path")
        for entry in self.env:
            if "=" not in entry or entry.startswith("="):
                raise ConfigError(f"environment entry {entry!r} is not KEY=value")
        for mount in self.mounts:
            mount.validate()
        if self.stop_grace < 0:
            raise ConfigError("stop grace period must not be negative")
        signal_number(self.stop_signal)
        if self.healthcheck is not None and not self.healthcheck.test:
            raise ConfigError("health check has an empty test command")
        targets: set[str] = set()
        for injected in self.files:
            injected.validate()
            if injected.target in targets:
                raise ConfigError(f"two secrets or configs are mounted at {injected.target}")
            targets.add(injected.target)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lower_dirs"] = [str(p) for p in self.lower_dirs]
        data["files"] = [f.to_json() for f in self.files]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerConfig:
        d = dict(data)
        d["lower_dirs"] = [Path(p) for p in d.get("lower_dirs", [])]
        d["mounts"] = [MountSpec(**m) for m in d.get("mounts", [])]
        d["resources"] = Resources(**d.get("resources", {}))
        hc = d.get("healthcheck")
        d["healthcheck"] = Healthcheck(**hc) if hc else None
        d["files"] = [InjectedFile.from_json(f) for f in d.get("files", [])]
        return cls(**d)


def signal_number(name: str | int) -> int:
    """"SIGTERM", "TERM", "15" or 15 → 15; an unknown name is a ConfigError."""
    import signal as _signal

    if isinstance(name, int):
        return name
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(_signal.Signals[text])
    except KeyError:
        raise ConfigError(f"unknown stop signal {name!r}") from None


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: list[int]
    home: str


def _parse_db(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def resolve_user(spec: str, passwd: str, group: str) -> ResolvedUser:
    """Resolve a user spec against the container's /etc/passwd and /etc/group texts.

    A numeric uid missing from passwd is allowed (gid defaults to 0, as in Docker); a name
    missing from passwd is an error. Supplementary groups are the groups listing the user.
    """
    spec = spec.strip()
    user_part, _, group_part = spec.partition(":")
    users = _parse_db(passwd)
    groups = _parse_db(group)
    uid, gid, home, user_name = 0, 0, "/", "root"
    if user_part == "":
        user_part = "0"
    entry = None
    for row in users:
        if len(row) < 4:
            continue
        if (user_part.isdigit() and row[2] == user_part) or row[0] == user_part:
            entry = row
            break
    if entry is not None:
        user_name = entry[0]
        try:
            uid, gid = int(entry[2]), int(entry[3])
        except ValueError:
            raise ConfigError(f"malformed /etc/passwd entry for user {entry[0]!r}") from None
        home = entry[5] if len(entry) > 5 and entry[5] else "/"
    elif user_part.isdigit():
        uid, user_name = int(user_part), ""
    else:
        raise ConfigError(f"unable to find user {user_part}: no matching entries in passwd file")
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            for row in groups:
                if len(row) >= 3 and row[0] == group_part:
                    gid = int(row[2])
                    break
            else:
                raise ConfigError(
                    f"unable to find group {group_part}: no matching entries in group file")
    additional: list[int] = []
    if user_name:
        for row in groups:
            if len(row) >= 4 and user_name in row[3].split(",") and row[2].isdigit():
                g = int(row[2])
                if g != gid and g not in additional:
                    additional.append(g)
    return ResolvedUser(uid=uid, gid=gid, additional_gids=additional, home=home)


def merge_env(base: list[str], overrides: list[str]) -> list[str]:
    """Image env then task env; a later KEY replaces an earlier one, order of first sight kept."""
    out: dict[str, str] = {}
    for entry in [*base, *overrides]:
        key, _, value = entry.partition("=")
        out[key] = value
    return [f"{k}={v}" for k, v in out.items()]
