"""Pure parts of the executor: user resolution, env merging, TaskSpec + image → ContainerConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.executor.spec import (
    ConfigError,
    ContainerConfig,
    Healthcheck,
    MountSpec,
    Resources,
    merge_env,
    resolve_user,
    signal_number,
)
from worker.executor.taskspec import config_from_task

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:1000:1000::/home/nobody:/bin/sh\n# c\n"
GROUP = "root:x:0:\nnobody:x:1000:\nstaff:x:50:nobody,other\nwheel:x:10:root\n"


def test_resolve_user_by_name_uid_and_group() -> None:
    assert resolve_user("", PASSWD, GROUP).uid == 0
    root = resolve_user("root", PASSWD, GROUP)
    assert (root.uid, root.gid, root.additional_gids, root.home) == (0, 0, [10], "/root")
    nobody = resolve_user("nobody", PASSWD, GROUP)
    assert (nobody.uid, nobody.gid, nobody.additional_gids, nobody.home) == (1000, 1000, [50], "/home/nobody")
    assert resolve_user("1000", PASSWD, GROUP).home == "/home/nobody"
    odd = resolve_user("4242:50", PASSWD, GROUP)
    assert (odd.uid, odd.gid, odd.additional_gids) == (4242, 50, [])
    assert resolve_user("nobody:staff", PASSWD, GROUP).gid == 50


def test_resolve_user_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="unable to find user ghost"):
        resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(ConfigError, match="unable to find group nogroup"):
        resolve_user("nobody:nogroup", PASSWD, GROUP)


def test_merge_env_later_wins_order_kept() -> None:
    assert merge_env(["PATH=/bin", "A=1"], ["A=2", "B=3"]) == ["PATH=/bin", "A=2", "B=3"]


def test_signal_names() -> None:
    assert signal_number("SIGTERM") == 15 and signal_number("kill") == 9 and signal_number("10") == 10
    with pytest.raises(ConfigError, match="unknown stop signal"):
        signal_number("SIGNOPE")


def test_config_validation_and_json_round_trip() -> None:
    config = ContainerConfig(
        id="abc", name="svc.1.abc", lower_dirs=[Path("/layers/a"), Path("/layers/b")],
        args=["sh"], env=["A=1"], mounts=[MountSpec(type="volume", source="v", target="/v")],
        resources=Resources(memory_bytes=1 << 26, nano_cpus=1_500_000_000, pids_limit=9),
        healthcheck=Healthcheck(test=["true"], interval=1.0))
    config.validate()
    assert ContainerConfig.from_json(config.to_json()) == config
    assert config.resources.cpu_quota() == 150_000
    with pytest.raises(ConfigError, match="no command"):
        ContainerConfig(id="x", name="x", lower_dirs=[Path("/l")], args=[]).validate()
    with pytest.raises(ConfigError, match="container id"):
        ContainerConfig(id="bad/id", name="x", lower_dirs=[Path("/l")], args=["a"]).validate()
    with pytest.raises(ConfigError, match="propagation"):
        MountSpec(type="bind", source="/a", target="/b", propagation="weird").validate()
    with pytest.raises(ConfigError, match="KEY=value"):
        ContainerConfig(id="x", name="x", lower_dirs=[Path("/l")], args=["a"], env=["novalue"]).validate()


IMAGE = {
    "Env": ["PATH=/usr/bin:/bin", "LANG=C"], "Entrypoint": ["/entry"], "Cmd": ["serve"],
    "WorkingDir": "/app", "User": "nobody", "StopSignal": "SIGQUIT", "Labels": {"from": "image"},
    "Healthcheck": {"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 5_000_000_000, "Retries": 4},
}


def test_image_config_is_the_default() -> None:
    c = config_from_task("t1", "web.1.t1", {"ContainerSpec": {"Image": "x"}}, IMAGE, [Path("/l")],
                         hostname="node-a")
    assert c.args == ["/entry", "serve"]
    assert c.env == ["PATH=/usr/bin:/bin", "LANG=C"]
    assert (c.cwd, c.user, c.stop_signal, c.hostname) == ("/app", "nobody", "SIGQUIT", "node-a")
    assert c.stop_grace == 10.0
    assert c.healthcheck == Healthcheck(test=["/bin/sh", "-c", "wget -q localhost"], interval=5.0,
                                        timeout=30.0, retries=4, start_period=0.0)
    assert c.labels == {"from": "image"}


def test_task_spec_overrides_image() -> None:
    spec = {
        "ContainerSpec": {
            "Image": "x", "Command": ["/bin/other"], "Args": ["-v"], "Env": ["LANG=de", "X=1"],
            "Dir": "/work", "User": "0:0", "Hostname": "h1", "StopSignal": "SIGINT",
            "StopGracePeriod": 2_000_000_000, "ReadOnly": True, "Hosts": ["10.0.0.1 db"],
            "DNSConfig": {"Nameservers": ["10.0.0.2"]},
            "Healthcheck": {"Test": ["NONE"]},
            "Mounts": [
                {"Type": "bind", "Source": "/srv", "Target": "/srv",
                 "BindOptions": {"Propagation": "rslave"}, "ReadOnly": True},
                {"Type": "volume", "Source": "data", "Target": "/data",
                 "VolumeOptions": {"Labels": {"k": "v"}}},
                {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 1024, "Mode": 0o1777}},
            ],
        },
        "Resources": {"Limits": {"MemoryBytes": 64 << 20, "NanoCPUs": 500_000_000, "Pids": 50}},
    }
    c = config_from_task("t2", "n", spec, IMAGE, [Path("/l")])
    assert c.args == ["/bin/other", "-v"]
    assert c.env == ["PATH=/usr/bin:/bin", "LANG=de", "X=1"]
    assert (c.cwd, c.user, c.hostname, c.stop_signal, c.stop_grace) == ("/work", "0:0", "h1", "SIGINT", 2.0)
    assert c.read_only and c.extra_hosts == ["10.0.0.1 db"] and c.dns_servers == ["10.0.0.2"]
    assert c.healthcheck is None
    assert c.mounts == [
        MountSpec(type="bind", source="/srv", target="/srv", read_only=True, propagation="rslave"),
        MountSpec(type="volume", source="data", target="/data", volume_labels={"k": "v"}),
        MountSpec(type="tmpfs", target="/tmp", tmpfs_size=1024, tmpfs_mode=0o1777),
    ]
    assert c.resources == Resources(memory_bytes=64 << 20, nano_cpus=500_000_000, pids_limit=50)


def test_args_alone_replace_image_cmd_only() -> None:
    c = config_from_task("t3", "n", {"ContainerSpec": {"Args": ["a", "b"]}}, IMAGE, [Path("/l")])
    assert c.args == ["/entry", "a", "b"]


def test_bad_task_specs_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="no command"):
        config_from_task("t", "n", {"ContainerSpec": {}}, {}, [Path("/l")])
    with pytest.raises(ConfigError, match="Target is required"):
        config_from_task("t", "n", {"ContainerSpec": {"Args": ["a"], "Mounts": [{"Type": "bind"}]}},
                         {}, [Path("/l")])
    with pytest.raises(ConfigError, match="CMD-SHELL"):
        config_from_task("t", "n", {"ContainerSpec": {"Args": ["a"], "Healthcheck": {"Test": ["BOGUS"]}}},
                         {}, [Path("/l")])
    with pytest.raises(ConfigError, match="at least 6 MiB"):
        config_from_task("t", "n", {"ContainerSpec": {"Args": ["a"]},
                                    "Resources": {"Limits": {"MemoryBytes": 1000}}}, {}, [Path("/l")])
