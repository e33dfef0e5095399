"""`POST /containers/create` bodies → ContainerConfig and the create record (worker.standalone.create),
without containers: dockerd's merging of the body over the image config, `-v` parsing, and the
400s for what dockerd refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.standalone.create import Created, CreateError, container_name, from_body, parse_bind

IMAGE = {"Entrypoint": None, "Cmd": ["sh"], "Env": ["PATH=/bin", "A=image"], "WorkingDir": "/srv",
         "User": "nobody", "Labels": {"from": "image"}}


def make(body: dict[str, Any], image: dict[str, Any] | None = None, netns: str = "") -> Created:
    return from_body("c" * 64, "web", {"Image": "busybox", **body}, "busybox", IMAGE if image is None else image,
                     [Path("/layers/1")], now=1700000000.0, netns_path=netns)


def test_the_body_wins_over_the_image_field_by_field() -> None:
    made = make({"Cmd": ["echo", "hi"], "Env": ["A=body", "B=2"], "Labels": {"x": "y"}})
    c = made.config
    assert c.args == ["echo", "hi"] and c.env == ["PATH=/bin", "A=body", "B=2"]
    assert (c.cwd, c.user, c.name, c.image) == ("/srv", "nobody", "web", "busybox")
    assert c.labels == {"from": "image", "x": "y"} and not c.tty and not c.stdin
    assert make({"Entrypoint": ["/bin/echo"]}).config.args == ["/bin/echo"]      # the image Cmd is dropped
    assert make({"Entrypoint": ["env"], "Cmd": ["-0"]}).config.args == ["env", "-0"]
    assert make({}).config.args == ["sh"]
    tty = make({"Tty": True, "OpenStdin": True, "WorkingDir": "/tmp", "User": "0:0"}).config
    assert tty.tty and tty.stdin and "TERM=xterm" in tty.env and (tty.cwd, tty.user) == ("/tmp", "0:0")


def test_the_record_echoes_what_inspect_shows() -> None:
    made = make({"Cmd": ["true"], "AttachStdout": True, "HostConfig": {
        "AutoRemove": True, "Binds": ["/host/dir:/mnt:ro"], "NetworkMode": "host",
        "ConsoleSize": [30, 100], "RestartPolicy": {"Name": "no"}}}, netns="/proc/1/ns/net")
    assert made.record["Created"] == 1700000000.0
    assert made.record["Config"]["Cmd"] == ["true"] and made.record["Config"]["AttachStdout"] is True
    assert made.record["HostConfig"]["AutoRemove"] is True
    assert made.record["HostConfig"]["NetworkMode"] == "host" and made.config.netns_path == "/proc/1/ns/net"
    assert made.bind_sources == ["/host/dir"] and made.console_size == (30, 100)
    assert [(m.type, m.source, m.target, m.read_only) for m in made.config.mounts] == [
        ("bind", "/host/dir", "/mnt", True)]


def test_binds_volumes_and_tmpfs() -> None:
    assert parse_bind("/a:/b").type == "bind" and parse_bind("/a:/b:rw,rshared").propagation == "rshared"
    vol = parse_bind("data:/var/lib/data:ro")
    assert (vol.type, vol.source, vol.read_only) == ("volume", "data", True)
    made = make({"Volumes": {"/anon": {}}, "HostConfig": {"Tmpfs": {"/run": ""}, "Binds": ["named:/named"]}})
    assert sorted((m.type, m.target) for m in made.config.mounts) == [
        ("tmpfs", "/run"), ("volume", "/anon"), ("volume", "/named")]
    assert made.bind_sources == []


@pytest.mark.parametrize(("body", "text"), [
    ({"HostConfig": {"RestartPolicy": {"Name": "always"}}}, "restart policy 'always' is not supported"),
    ({"HostConfig": {"Binds": ["/a"]}}, "invalid volume specification: '/a'"),
    ({"HostConfig": {"Binds": ["/a:relative"]}}, "mount path must be absolute"),
    ({"HostConfig": {"Binds": ["/a:/b:bogus"]}}, "invalid mode: bogus"),
    ({"HostConfig": {"Binds": ["rel/dir:/b"]}}, "includes invalid characters for a local volume name"),
    ({"HostConfig": {"Binds": ["/a:/b", "/c:/b"]}}, "Duplicate mount point: /b"),
    ({"HostConfig": {"Memory": 1024}}, "Minimum memory limit allowed is 6MB"),
    ({"HostConfig": {"Memory": "lots"}}, "HostConfig.Memory must be a non-negative integer"),
    ({"HostConfig": {"RestartPolicy": "always"}}, "RestartPolicy must be an object"),
    ({"HostConfig": {"Mounts": ["x"]}}, "HostConfig.Mounts must be a list of objects"),
    ({"HostConfig": {"ExtraHosts": ["nohost"]}}, "invalid extra host: nohost"),
    ({"Env": ["=x"]}, "invalid environment variable: =x"),
    ({"Env": [""]}, "invalid environment variable: "),
    ({"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}}, "publishing ports (-p)"),
    ({"HostConfig": {"Privileged": True}}, "--privileged (HostConfig.Privileged) is not supported"),
    ({"HostConfig": {"PidMode": "host"}}, "--pid"),
    ({"HostConfig": {"Init": True}}, "--init (HostConfig.Init) is not supported"),       # was silently dropped
    ({"HostConfig": {"CgroupnsMode": "private"}}, "--cgroupns=private (HostConfig.CgroupnsMode) is not supported"),
    ({"HostConfig": {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/v",
                                 "VolumeOptions": {"Subpath": "sub"}}]}}, "VolumeOptions.Subpath"),
    ({"HostConfig": {"CpuShares": 512}}, "--cpu-shares (HostConfig.CpuShares) is not supported"),
    ({"HostConfig": {"Runtime": "runsc"}}, "--runtime (HostConfig.Runtime) is not supported"),
    ({"HostConfig": {"Links": ["a:b"]}}, "legacy links (--link, HostConfig.Links) are not supported on network"),
    ({"HostConfig": {"Links": ["a:b"], "NetworkMode": "container:x"}}, "container type network can't be used"),
    ({"HostConfig": {"Links": "a:b", "NetworkMode": "mine"}}, 'HostConfig.Links must be a list of "container:alias"'),
    ({"WorkingDir": "relative"}, "the working directory 'relative' is invalid"),
    ({"User": 5}, "User must be a string"),
    ({"Cmd": [1]}, "Cmd must be a list of strings"),
    ({"Labels": {"a": 1}}, "Labels must map names to strings"),
])
def test_bad_bodies_are_400s(body: dict[str, Any], text: str) -> None:
    with pytest.raises(CreateError) as caught:
        make(body)
    assert caught.value.status == 400 and text in caught.value.message


def test_no_command_and_names() -> None:
    with pytest.raises(CreateError, match="No command specified"):
        make({}, image={})
    assert container_name("/web") == "web" and container_name("a.b_c-1") == "a.b_c-1"
    for bad in ("", "a", "-x", "bad name", "x/y"):
        with pytest.raises(CreateError, match="Invalid container name"):
            container_name(bad)


def test_what_dockerd_echoes_env_without_value_tmpfs_log_config() -> None:
    made = make({"Env": ["Foo", "Other=one", "Blank="], "HostConfig": {
        "Tmpfs": {"/tmp1": "size=3M"}, "LogConfig": {"Type": "json-file", "Config": {"max-file": "100"}},
        "Isolation": "default", "MemorySwap": -1}})
    assert sorted(made.record["Config"]["Env"]) == sorted(["PATH=/bin", "A=image", "Foo", "Other=one", "Blank="])
    assert "Foo" not in made.config.env and "Blank=" in made.config.env
    assert made.record["HostConfig"]["Tmpfs"] == {"/tmp1": "size=3M"}
    assert [m.tmpfs_size for m in made.config.mounts] == [3 * 1024 * 1024]
    assert made.record["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "100"}}
    assert made.record["HostConfig"]["Isolation"] == "default" and made.record["HostConfig"]["MemorySwap"] == -1
    assert make({"HostConfig": {"LogConfig": {"Type": ""}}}).record["HostConfig"]["LogConfig"] == {
        "Type": "json-file", "Config": {}}
    with pytest.raises(CreateError, match="logger: no log driver named 'asdf-nope' is registered"):
        make({"HostConfig": {"LogConfig": {"Type": "asdf-nope"}}})
    with pytest.raises(CreateError, match="invalid tmpfs size"):
        make({"HostConfig": {"Tmpfs": {"/t": "size=lots"}}})


def test_unset_options_sent_by_clients_are_accepted() -> None:
    made = make({"HostConfig": {"PortBindings": {}, "Privileged": False, "CapAdd": None, "PidMode": "",
                                "IpcMode": "private", "Links": None, "Devices": [], "Init": None, "CpuShares": 0,
                                "Runtime": "runc", "CgroupnsMode": "", "VolumeDriver": "", "ShmSize": 0}})
    assert made.config.args == ["sh"]
