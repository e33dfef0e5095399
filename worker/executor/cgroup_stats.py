"""Container resource usage from its cgroups, in the shape of dockerd's `GET /containers/{id}/stats`.

Theory of operation: `read_sample` reads one container's counters (cgroup v1 or v2, whichever
the host mounts; the container's cgroup path is the executor's `Layout.cgroups_path`), the
host's CPU time from /proc/stat and the interface counters of the container's network
namespace (/proc/<pid>/net/dev), and `stats_doc` turns a sample and the one before it into the
document (`precpu_stats` is the previous sample's `cpu_stats`: the docker CLI computes CPU % from
the difference). The parsers are pure functions of the files' text. Memory without a limit
reports the host's memory as the limit, as dockerd does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model import format_time

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 62           # cgroup v1 writes "no limit" as a number near 2^63
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return ""


def _int(text: str, default: int = 0) -> int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return default


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat, cpuacct.stat) → {key: value}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """/proc/<pid>/net/dev → dockerd's `networks` (without `lo`)."""
    out = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        name = name.strip()
        if not name or name == "lo" or len(fields) < 16:
            continue
        n = [int(f) for f in fields]
        out[name] = {"rx_bytes": n[0], "rx_packets": n[1], "rx_errors": n[2], "rx_dropped": n[3],
                     "tx_bytes": n[8], "tx_packets": n[9], "tx_errors": n[10], "tx_dropped": n[11]}
    return out


def parse_blkio_v1(text: str) -> list[dict[str, Any]]:
    """blkio.throttle.io_service_bytes: `MAJ:MIN Op value` lines."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0] and parts[2].isdigit():
            major, minor = parts[0].split(":")
            out.append({"major": int(major), "minor": int(minor), "op": parts[1].lower(),
                        "value": int(parts[2])})
    return out


def parse_io_stat_v2(text: str) -> list[dict[str, Any]]:
    """io.stat: `MAJ:MIN rbytes=N wbytes=N ...` lines → read/write service bytes."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, minor = parts[0].split(":")
        kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        for key, op in (("rbytes", "read"), ("wbytes", "write")):
            if key in kv:
                out.append({"major": int(major), "minor": int(minor), "op": op, "value": int(kv[key])})
    return out


def system_cpu_usage(proc_stat: str) -> int:
    """The host's CPU time in nanoseconds: the first `cpu` line of /proc/stat (first 8 fields)."""
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            ticks = sum(int(f) for f in line.split()[1:9])
            return ticks * 1_000_000_000 // CLOCK_TICKS
    return 0


def host_memory() -> int:
    for line in _read(Path("/proc/meminfo")).splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Sample:
    read: float
    cpu: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    pids: dict[str, Any] = field(default_factory=dict)
    blkio: list[dict[str, Any]] = field(default_factory=list)
    networks: dict[str, dict[str, int]] = field(default_factory=dict)


def _v1_dir(root: Path, controller: str, rel: str) -> Path:
    """The container's directory in the v1 hierarchy holding `controller` (e.g. cpu,cpuacct)."""
    direct = root / controller
    if direct.is_dir():
        return direct / rel
    for hierarchy in root.iterdir() if root.is_dir() else []:
        if controller in hierarchy.name.split(","):
            return hierarchy / rel
    return direct / rel


def cgroup_procs(cgroup_path: str, root: Path = CGROUP_ROOT) -> list[int]:
    """The pids in the container's cgroup (its init, its children, its exec'd processes)."""
    rel = cgroup_path.lstrip("/")
    path = (root / rel / "cgroup.procs") if (root / "cgroup.controllers").exists() \
        else _v1_dir(root, "pids", rel) / "cgroup.procs"
    return [int(p) for p in _read(path).split() if p.isdigit()]


def read_sample(cgroup_path: str, pid: int, now: float, root: Path = CGROUP_ROOT) -> Sample:
    """One reading of the container's counters (blocking file reads: call in a thread)."""
    rel = cgroup_path.lstrip("/")
    sample = Sample(read=now)
    online = len(os.sched_getaffinity(0)) or 1
    system = system_cpu_usage(_read(Path("/proc/stat")))
    if (root / "cgroup.controllers").exists():
        d = root / rel
        cpu = parse_flat_keyed(_read(d / "cpu.stat"))
        sample.cpu = {
            "cpu_usage": {"total_usage": cpu.get("usage_usec", 0) * 1000,
                          "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000,
                          "usage_in_usermode": cpu.get("user_usec", 0) * 1000},
            "system_cpu_usage": system, "online_cpus": online,
            "throttling_data": {"periods": cpu.get("nr_periods", 0),
                                "throttled_periods": cpu.get("nr_throttled", 0),
                                "throttled_time": cpu.get("throttled_usec", 0) * 1000}}
        limit_text = _read(d / "memory.max").strip()
        limit = host_memory() if limit_text in ("", "max") else _int(limit_text)
        sample.memory = {"usage": _int(_read(d / "memory.current")),
                         "stats": parse_flat_keyed(_read(d / "memory.stat")), "limit": limit}
        pids_max = _read(d / "pids.max").strip()
        sample.pids = {"current": _int(_read(d / "pids.current")),
                       **({"limit": _int(pids_max)} if pids_max.isdigit() else {})}
        sample.blkio = parse_io_stat_v2(_read(d / "io.stat"))
    else:
        acct = _v1_dir(root, "cpuacct", rel)
        cpu_dir = _v1_dir(root, "cpu", rel)
        ticks = parse_flat_keyed(_read(acct / "cpuacct.stat"))
        throttling = parse_flat_keyed(_read(cpu_dir / "cpu.stat"))
        to_ns = 1_000_000_000 // CLOCK_TICKS
        sample.cpu = {
            "cpu_usage": {"total_usage": _int(_read(acct / "cpuacct.usage")),
                          "percpu_usage": [int(v) for v in _read(acct / "cpuacct.usage_percpu").split()],
                          "usage_in_kernelmode": ticks.get("system", 0) * to_ns,
                          "usage_in_usermode": ticks.get("user", 0) * to_ns},
            "system_cpu_usage": system, "online_cpus": online,
            "throttling_data": {"periods": throttling.get("nr_periods", 0),
                                "throttled_periods": throttling.get("nr_throttled", 0),
                                "throttled_time": throttling.get("throttled_time", 0)}}
        mem = _v1_dir(root, "memory", rel)
        limit = _int(_read(mem / "memory.limit_in_bytes"))
        sample.memory = {"usage": _int(_read(mem / "memory.usage_in_bytes")),
                         "max_usage": _int(_read(mem / "memory.max_usage_in_bytes")),
                         "stats": parse_flat_keyed(_read(mem / "memory.stat")),
                         "limit": host_memory() if limit == 0 or limit >= UNLIMITED else limit}
        pids = _v1_dir(root, "pids", rel)
        pids_max = _read(pids / "pids.max").strip()
        sample.pids = {"current": _int(_read(pids / "pids.current")),
                       **({"limit": _int(pids_max)} if pids_max.isdigit() else {})}
        sample.blkio = parse_blkio_v1(_read(_v1_dir(root, "blkio", rel) / "blkio.throttle.io_service_bytes"))
    if pid > 0:
        sample.networks = parse_net_dev(_read(Path(f"/proc/{pid}/net/dev")))
    return sample


def empty_cpu() -> dict[str, Any]:
    return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


ZERO_TIME = "0001-01-01T00:00:00Z"


def stats_doc(cid: str, name: str, sample: Sample | None, previous: Sample | None) -> dict[str, Any]:
    """The stats document; a container that is not running (no sample) reads all zeroes."""
    empty_blkio = {k: None for k in (
        "io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive",
        "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive",
        "io_time_recursive", "sectors_recursive")}
    doc: dict[str, Any] = {
        "read": format_time(sample.read) if sample else ZERO_TIME,
        "preread": format_time(previous.read) if previous else ZERO_TIME,
        "pids_stats": sample.pids if sample else {},
        "blkio_stats": {**empty_blkio, "io_service_bytes_recursive": sample.blkio or None}
        if sample else empty_blkio,
        "num_procs": 0, "storage_stats": {},
        "cpu_stats": sample.cpu if sample else empty_cpu(),
        "precpu_stats": previous.cpu if previous else empty_cpu(),
        "memory_stats": sample.memory if sample else {},
        "name": "/" + name, "id": cid,
    }
    if sample is not None:
        doc["networks"] = sample.networks
    return doc
