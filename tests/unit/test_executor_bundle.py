"""The OCI config.json built from a ContainerConfig (pure)."""

from __future__ import annotations

from pathlib import Path

from worker.executor.bundle import (
    DEFAULT_CAPABILITIES,
    HostPaths,
    build_spec,
    hosts_file,
    resolv_conf,
)
from worker.executor.spec import ContainerConfig, MountSpec, ResolvedUser, Resources

USER = ResolvedUser(uid=1000, gid=1000, additional_gids=[50], home="/home/u")
HOST = HostPaths(rootfs="/data/c/rootfs", cgroups_path="/shoal/abc/c1",
                 etc_files={"/etc/hosts": "/data/c/etc/hosts", "/etc/hostname": "/data/c/etc/hostname"},
                 volume_sources={"/v": "/data/volumes/v/_data"}, nofile_hard=4096)


def config(**kw: object) -> ContainerConfig:
    base: dict[str, object] = {"id": "c1", "name": "svc.1", "lower_dirs": [Path("/l")], "args": ["sh", "-c", "x"]}
    base.update(kw)
    return ContainerConfig(**base)  # type: ignore[arg-type]


def test_process_namespaces_and_defaults() -> None:
    spec = build_spec(config(env=["A=1"], cwd="/w", hostname="h"), USER, HOST)
    p = spec["process"]
    assert p["args"] == ["sh", "-c", "x"] and p["cwd"] == "/w" and p["terminal"] is False
    assert p["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50]}
    assert p["env"][0].startswith("PATH=") and "A=1" in p["env"]
    assert "HOSTNAME=h" in p["env"] and "HOME=/home/u" in p["env"]
    assert p["capabilities"]["bounding"] == DEFAULT_CAPABILITIES
    assert "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES and len(DEFAULT_CAPABILITIES) == 14
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]
    assert spec["hostname"] == "h"
    assert spec["root"] == {"path": "/data/c/rootfs", "readonly": False}
    linux = spec["linux"]
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert linux["cgroupsPath"] == "/shoal/abc/c1"
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    dests = [m["destination"] for m in spec["mounts"]]
    for d in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/etc/hosts", "/etc/hostname"):
        assert d in dests
    assert linux["rootfsPropagation"] == "rprivate"
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}


def test_limits_netns_and_read_only() -> None:
    spec = build_spec(config(resources=Resources(memory_bytes=1 << 26, nano_cpus=250_000_000, pids_limit=7),
                             netns_path="/run/netns/x", read_only=True), USER, HOST)
    res = spec["linux"]["resources"]
    assert res["memory"] == {"limit": 1 << 26, "swap": 1 << 26}
    assert res["cpu"] == {"quota": 25_000, "period": 100_000}
    assert res["pids"] == {"limit": 7}
    assert spec["linux"]["namespaces"][-1] == {"type": "network", "path": "/run/netns/x"}
    assert spec["root"]["readonly"] is True


def test_mounts_and_propagation() -> None:
    spec = build_spec(config(mounts=[
        MountSpec(type="bind", source="/srv", target="/srv", propagation="rshared", read_only=True),
        MountSpec(type="volume", source="v", target="/v"),
        MountSpec(type="tmpfs", target="/t", tmpfs_size=4096, tmpfs_mode=0o700),
        MountSpec(type="bind", source="/my/hosts", target="/etc/hosts"),
    ]), USER, HOST)
    by_dest = {m["destination"]: m for m in spec["mounts"]}
    assert by_dest["/srv"] == {"destination": "/srv", "type": "bind", "source": "/srv",
                               "options": ["rbind", "rshared", "ro"]}
    assert by_dest["/v"]["source"] == "/data/volumes/v/_data"
    assert by_dest["/v"]["options"] == ["rbind", "rprivate", "rw"]
    assert by_dest["/t"]["type"] == "tmpfs" and "size=4096" in by_dest["/t"]["options"]
    assert "mode=700" in by_dest["/t"]["options"]
    assert by_dest["/etc/hosts"]["source"] == "/my/hosts"      # a user mount wins over ours
    assert [m["destination"] for m in spec["mounts"]].count("/etc/hosts") == 1
    assert spec["linux"]["rootfsPropagation"] == "rshared"
    slave = build_spec(config(mounts=[MountSpec(type="bind", source="/s", target="/s",
                                                propagation="rslave")]), USER, HOST)
    assert slave["linux"]["rootfsPropagation"] == "rslave"


def test_etc_files() -> None:
    hosts = hosts_file("web1", ["10.0.0.5 db db.local"])
    assert "127.0.0.1\tlocalhost" in hosts and "10.0.0.5 db db.local" in hosts
    assert "127.0.1.1\tweb1" in hosts
    assert resolv_conf("nameserver 127.0.0.53\nnameserver 8.8.8.8\nsearch x\n", []) == \
        "nameserver 8.8.8.8\nsearch x\n"
    assert resolv_conf("nameserver 8.8.8.8\n", ["10.0.0.2"]) == "nameserver 10.0.0.2\n"
