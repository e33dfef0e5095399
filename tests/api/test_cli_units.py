"""Pure parts of the service CLI: flag units, flag -> spec, progress evaluation, table text."""

from __future__ import annotations

from typing import Any

import pytest

from cli.service_flags import (
    FlagError,
    apply_scalar_flags,
    image_with_tag,
    new_service_spec,
    parse_cpus,
    parse_duration,
    parse_file_ref,
    parse_mount,
    parse_ports,
    parse_size,
    update_ports,
)
from cli.service_progress import evaluate
from cli.task_format import columns, human_duration, service_ports, task_rows
from model import parse_time


@pytest.mark.parametrize(("text", "nanos"), [("10s", 10 * 10**9), ("1m30s", 90 * 10**9), ("500ms", 5 * 10**8),
                                             ("1h", 3600 * 10**9), ("1.5s", 15 * 10**8), ("0", 0)])
def test_durations(text: str, nanos: int) -> None:
    assert parse_duration(text, "--x") == nanos


@pytest.mark.parametrize("text", ["10", "5 parsecs", "s", "1m30", ""])
def test_bad_durations_name_the_flag(text: str) -> None:
    with pytest.raises(FlagError, match="--update-delay"):
        parse_duration(text, "--update-delay")


def test_sizes_and_cpus() -> None:
    assert parse_size("64M", "--m") == 64 * 1024**2
    assert parse_size("1G", "--m") == 1024**3
    assert parse_size("512k", "--m") == 512 * 1024
    assert parse_size("100", "--m") == 100
    assert parse_cpus("0.5", "--c") == 500_000_000
    for bad, fn in (("lots", parse_size), ("-1", parse_cpus), ("x", parse_cpus)):
        with pytest.raises(FlagError, match="--q"):
            fn(bad, "--q")


def test_mount_port_and_file_refs() -> None:
    assert parse_mount("type=bind,source=/a,target=/b,readonly") == \
        {"Type": "bind", "Source": "/a", "Target": "/b", "ReadOnly": True}
    with pytest.raises(FlagError, match="target is required"):
        parse_mount("type=volume,source=v")
    assert parse_file_ref("source=pw,target=/run/pw,mode=0400", "--secret")["File"]["Mode"] == 0o400
    assert image_with_tag("busybox") == "busybox:latest"
    assert image_with_tag("localhost:5000/app") == "localhost:5000/app:latest"
    assert image_with_tag("app@sha256:abc") == "app@sha256:abc"


def port(target: int, published: int = 0, protocol: str = "tcp", mode: str = "ingress") -> dict[str, Any]:
    out: dict[str, Any] = {"Protocol": protocol, "TargetPort": target}
    if published:
        out["PublishedPort"] = published
    out["PublishMode"] = mode
    return out


@pytest.mark.parametrize(("text", "ports"), [
    ("8080:80", [port(80, 8080)]),
    ("8080:80/udp", [port(80, 8080, "udp")]),
    ("8080:80/UDP", [port(80, 8080, "udp")]),
    ("80", [port(80)]),                                          # published: any free port
    ("80/sctp", [port(80, protocol="sctp")]),
    (":80", [port(80)]),
    ("8000-8001:80-81", [port(80, 8000), port(81, 8001)]),
    ("8000-8002:80", [port(80, 8000), port(80, 8001), port(80, 8002)]),
    ("80-81", [port(80), port(81)]),
    ("published=8080,target=80", [port(80, 8080)]),
    ("target=53,published=53,protocol=udp,mode=host", [port(53, 53, "udp", "host")]),
    ("Target=80,Mode=HOST", [port(80, mode="host")]),            # the docker CLI lower-cases fields
    ("mode=host,target=80", [port(80, mode="host")]),
])
def test_publish_short_and_long_forms(text: str, ports: list[dict[str, Any]]) -> None:
    assert parse_ports(text) == ports


@pytest.mark.parametrize(("text", "reason"), [
    ("http", "invalid containerPort: http"),
    ("8080:", "no port specified: 8080:<empty>"),
    ("x:80", "invalid hostPort: x"),
    ("8080:80/icmp", "invalid proto: icmp"),
    ("70000:80", "invalid hostPort: 70000"),
    ("8000-8001:80-82", "invalid ranges specified for container and host Ports: 80-82 and 8000-8001"),
    ("127.0.0.1:8080:80", "hostip is not supported"),
    ("nonsense:8080:80", "invalid IP address: nonsense"),
    ("published=8080", 'missing mandatory field "target"'),
    ("target=80,protocol=icmp", "invalid protocol value icmp"),
    ("target=80,mode=routed", "invalid publish mode value routed"),
    ("target=80,hostip=1", "invalid field key hostip"),
    ("target=80,published", "invalid field published"),
    ("target=http1", 'strconv.ParseUint: parsing "http1": invalid syntax'),
    ("target=70000", 'strconv.ParseUint: parsing "70000": value out of range'),
])
def test_bad_publish_values_read_as_the_docker_clis(text: str, reason: str) -> None:
    with pytest.raises(FlagError) as err:
        parse_ports(text)
    assert str(err.value) == f'invalid argument "{text}" for "-p, --publish" flag: {reason}'
    with pytest.raises(FlagError, match='for "--publish-add" flag'):
        parse_ports(text, "--publish-add")


def test_publish_add_and_rm_merge_as_the_docker_cli_does() -> None:
    current = [port(80, 8080), port(53, 53, "udp"), port(443, 30000), port(9000, 9000, mode="host")]
    # rm matches protocol, target and mode (tcp and ingress unless said), whatever the published port
    assert update_ports(current, [], parse_ports("80")) == [port(443, 30000), port(53, 53, "udp"),
                                                             port(9000, 9000, mode="host")]
    assert update_ports(current, [], parse_ports("53")) == sorted(current, key=lambda p: (
        f"{p.get('PublishedPort', 0)}:{p['TargetPort']}/{p['Protocol']}/{p['PublishMode']}"))  # tcp: no match
    assert port(53, 53, "udp") not in update_ports(current, [], parse_ports("53/udp"))
    assert port(9000, 9000, mode="host") not in update_ports(current, [], parse_ports("target=9000,mode=host"))
    assert port(9000, 9000, mode="host") in update_ports(current, [], parse_ports("9000"))
    # add: an entry already there (same key) is not doubled; the result is sorted by key, as text
    added = update_ports(current, parse_ports("8080:80") + parse_ports("9090:90"), [])
    assert added == [port(443, 30000), port(53, 53, "udp"), port(80, 8080), port(9000, 9000, mode="host"),
                     port(90, 9090)]   # "9000:..." < "9090:..."
    # replacing a port: rm the old target, add the new mapping
    assert update_ports([port(80, 8080)], parse_ports("8081:80"), parse_ports("80")) == [port(80, 8081)]


@pytest.mark.parametrize(("ports", "column"), [
    ([], ""),
    ([port(80, 8080)], "*:8080->80/tcp"),
    ([port(80, 30000), port(53, 53, "udp"), port(9000, 9000, mode="host")], "*:30000->80/tcp, *:53->53/udp"),
    ([port(81, 8081), port(80, 8080)], "*:8080-8081->80-81/tcp"),
    ([port(80, 8080), port(90, 9090)], "*:8080->80/tcp, *:9090->90/tcp"),
    ([port(80, 8080), port(80, 8081)], "*:8080-8081->80/tcp"),
])
def test_service_ls_ports_column_is_the_docker_clis(ports: list[dict[str, Any]], column: str) -> None:
    assert service_ports(ports) == column


def test_scalar_flags_fill_the_spec() -> None:
    spec = new_service_spec("web", "busybox", ("sleep", "1"), "replicated")
    apply_scalar_flags(spec, {"replicas": 3, "reserve_memory": "32M", "update_failure_action": "rollback",
                              "rollback_monitor": "2s", "health_cmd": "true", "health_retries": 2,
                              "stop_grace_period": "3s", "user": "nobody"})
    assert spec["Mode"] == {"Replicated": {"Replicas": 3}}
    assert spec["TaskTemplate"]["Resources"] == {"Reservations": {"MemoryBytes": 32 * 1024**2}}
    assert spec["UpdateConfig"] == {"FailureAction": "rollback"}
    assert spec["RollbackConfig"] == {"Monitor": 2_000_000_000}
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Retries": 2}
    assert container["StopGracePeriod"] == 3_000_000_000 and container["User"] == "nobody"
    with pytest.raises(FlagError, match="--no-healthcheck"):
        apply_scalar_flags(spec, {"no_healthcheck": True, "health_cmd": "x"})
    glob = new_service_spec("g", "busybox", (), "global")
    with pytest.raises(FlagError, match="--replicas"):
        apply_scalar_flags(glob, {"replicas": 2})


def _task(slot: int, state: str, desired: str = "running", node: str = "n1", err: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"State": state}
    if err:
        status["Err"] = err
    return {"ID": f"t{slot}{state}", "Slot": slot, "NodeID": node, "DesiredState": desired, "Status": status}


def test_progress_of_replicated_and_global_services() -> None:
    nodes = [{"ID": "n1", "Status": {"State": "ready"}}, {"ID": "n2", "Status": {"State": "down"}}]
    svc = {"Spec": {"Mode": {"Replicated": {"Replicas": 3}}}}
    tasks = [_task(1, "running"), _task(2, "starting"), _task(3, "running", node="n2"),
             _task(2, "shutdown", desired="shutdown")]
    progress = evaluate(svc, tasks, nodes)
    assert (progress.converged, progress.running, progress.desired) == (False, 1, 3)
    assert [(line.label, line.state) for line in progress.lines] == [("1/3", "running"), ("2/3", "starting"),
                                                                    ("3/3", "")]
    tasks = [_task(1, "running"), _task(2, "running"), _task(3, "rejected", err="No such image: x")]
    progress = evaluate(svc, tasks, nodes)
    assert not progress.converged and progress.lines[2].err == "No such image: x"
    tasks[2] = _task(3, "running")
    assert evaluate(svc, tasks, nodes).converged
    glob: dict[str, Any] = {"Spec": {"Mode": {"Global": {}}}}
    gtasks = [_task(0, "running", node="n1"), _task(0, "running", node="n2")]
    progress = evaluate(glob, gtasks, nodes)
    assert progress.converged and progress.desired == 1


def test_table_text() -> None:
    assert columns(("A", "BB"), [["xxx", "y"]]) == "A     BB\nxxx   y"
    assert human_duration(5) == "5 seconds" and human_duration(90) == "About a minute"
    assert human_duration(3 * 3600) == "3 hours"
    from cli.task_format import _state_since
    assert _state_since({"Status": {"State": "running", "Timestamp": "2026-01-01T00:00:00Z"}},
                        parse_time("2026-01-01T00:01:30Z")) == "Running about a minute ago"
    tasks = [
        {"ID": "a" * 25, "ServiceID": "s", "Slot": 1, "NodeID": "n1", "DesiredState": "shutdown",
         "CreatedAt": "2026-01-01T00:00:00.000000000Z", "Spec": {"ContainerSpec": {"Image": "busybox:1@sha256:x"}},
         "Status": {"State": "failed", "Timestamp": "2026-01-01T00:00:00.000000000Z",
                    "Err": "task: non-zero exit (1)"}},
        {"ID": "b" * 25, "ServiceID": "s", "Slot": 1, "NodeID": "n1", "DesiredState": "running",
         "CreatedAt": "2026-01-01T00:00:05.000000000Z", "Spec": {"ContainerSpec": {"Image": "busybox:1@sha256:x"}},
         "Status": {"State": "running", "Timestamp": "2026-01-01T00:00:05.000000000Z"}},
    ]
    rows = task_rows(tasks, {"s": "web"}, {"n1": "node-a"}, parse_time("2026-01-01T00:00:10.000000000Z"))
    assert rows[0][:6] == ["b" * 12, "web.1", "busybox:1", "node-a", "Running", "Running 5 seconds ago"]
    assert rows[1][1] == " \\_ web.1" and rows[1][6] == '"task: non-zero exit (1)"'
