"""The pure parts of the node-local container API: dockerd's names, lookups, status texts, list
filters, ps and cgroup parsing, and the exec config checks (no containers needed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from engineapi.filters import parse_filters
from engineapi.http import ApiError
from worker.exec import ContainerState, ExitStatus
from worker.executor.cgroup_stats import parse_blkio_v1, parse_io_stat_v2, parse_net_dev, stats_doc, system_cpu_usage
from worker.executor.container_filters import ListQuery
from worker.executor.container_view import ContainerView, find, human_duration, inspect, status_text, summaries
from worker.executor.exec_sessions import ExecConfig, ExecError
from worker.executor.local_containers import parse_ps, parse_signal
from worker.executor.spec import ContainerConfig, MountSpec

LABELS = {"com.docker.swarm.service.name": "web", "com.docker.swarm.task.id": "abc123"}


def view(cid: str, name: str, status: str = "running", *, created: float = 1000.0, code: int = 0,
         started: str = "1970-01-01T00:16:40Z", finished: str = "1970-01-01T00:20:00Z") -> ContainerView:
    config = ContainerConfig(id=cid, name=name, lower_dirs=[Path("/l")], args=["sleep", "9"],
                             labels=dict(LABELS), image="busybox:latest")
    exit_status = ExitStatus(code, finished_at=finished) if status == "stopped" else None
    return ContainerView(config, ContainerState(status, 42 if status == "running" else 0,  # type: ignore[arg-type]
                                                started, exit_status), created, "sha256:" + "0" * 64)


def test_lookup_is_exact_id_then_exact_name_then_a_unique_id_prefix() -> None:
    a, b = view("abc1", "web.1.abc1"), view("abd2", "abc1x")
    views = [a, b]
    assert find(views, "abc1") is a and find(views, "/abc1x") is b and find(views, "abd") is b
    with pytest.raises(ApiError) as ambiguous:
        find(views, "ab")
    assert ambiguous.value.status == 400 and "Multiple IDs found with provided prefix: ab" in ambiguous.value.message
    with pytest.raises(ApiError) as missing:
        find(views, "zz")
    assert (missing.value.status, missing.value.message) == (404, "No such container: zz")


def test_status_texts_and_durations_as_docker_ps_prints_them() -> None:
    assert [human_duration(s) for s in (0.5, 1, 59, 61, 3000, 3600, 7200, 3 * 86400)] == [
        "Less than a second", "1 second", "59 seconds", "About a minute", "50 minutes", "About an hour",
        "2 hours", "3 days"]
    assert status_text(view("a", "n"), now=1000 + 125) == "Up 2 minutes"
    assert status_text(view("a", "n", "stopped", code=137), now=1200 + 3) == "Exited (137) 3 seconds ago"
    assert status_text(view("a", "n", "created"), now=0) == "Created"


def test_rows_newest_first_with_the_task_labels_and_filters() -> None:
    old, new = view("a1", "web.1.a1", created=10), view("b2", "web.2.b2", "stopped", created=20, code=3)
    rows = summaries([old, new], now=2000)
    assert [r["Id"] for r in rows] == ["b2", "a1"]
    assert rows[1]["Names"] == ["/web.1.a1"] and rows[1]["State"] == "running" and rows[0]["State"] == "exited"
    assert rows[1]["Labels"]["com.docker.swarm.task"] == "" and rows[1]["Image"] == "busybox:latest"
    assert rows[1]["Command"] == "sleep 9" and rows[1]["Created"] == 10

    def pick(raw: str) -> list[str]:
        views = [old, new]
        return sorted(v.id for v in ListQuery.parse(parse_filters(raw), views, show_all=True,
                                                    resolve_image=lambda r: images.get(r, "")).select(views))

    images = {"busybox": "sha256:" + "0" * 64, "other": "sha256:" + "1" * 64}
    assert pick('{"label":{"com.docker.swarm.service.name=web":true}}') == ["a1", "b2"]
    assert pick('{"label":["com.docker.swarm.service.name=db"]}') == []
    assert pick('{"name":["web.2"]}') == ["b2"] and pick('{"id":["a"]}') == ["a1"]
    assert pick('{"status":["exited"]}') == ["b2"] and pick('{"exited":["3"]}') == ["b2"]
    assert pick('{"is-task":["true"]}') == ["a1", "b2"] and pick('{"ancestor":["busybox"]}') == ["a1", "b2"]
    with pytest.raises(ApiError, match="invalid filter 'status=bogus'"):
        pick('{"status":["bogus"]}')


def test_list_filters_as_dockerd() -> None:
    """before/since (by ID, prefix or name, walking newest first), name/id as regular
    expressions, exited only with -a, health, is-task, ancestor by image ID, volume by
    destination or name, network by name or ID prefix, expose/publish on the Ports."""
    a = view("a1", "web.1.a1", created=10)
    b = view("b2", "web.2.b2", "stopped", created=20, code=3)
    c = view("c3", "solo", created=30)
    c = ContainerView(replace(c.config, labels={}, image="other:1",
                              mounts=[MountSpec(type="volume", source="data", target="/data")],
                              networks=[{"name": "lan", "id": "f00d" + "0" * 60}]),
                      replace(c.state, health={"Status": "healthy"}), 30, "sha256:" + "1" * 64,
                      standalone={"Config": {"ExposedPorts": {"80/tcp": {}, "53/udp": {}}}})
    views = [a, b, c]
    images = {"busybox": "sha256:" + "0" * 64, "other:1": "sha256:" + "1" * 64}

    def ps(raw: str, show_all: bool = False, limit: int = 0) -> list[str]:
        q = ListQuery.parse(parse_filters(raw), views, show_all=show_all, limit=limit,
                            resolve_image=lambda r: images.get(r, ""))
        return [v.id for v in q.select(views)]

    assert ps("") == ["c3", "a1"] and ps("", show_all=True) == ["c3", "b2", "a1"] and ps("", limit=2) == ["c3", "b2"]
    assert ps('{"before":["solo"]}', show_all=True) == ["b2", "a1"] and ps('{"since":["a1"]}', True) == ["c3", "b2"]
    assert ps('{"before":["c"]}') == ["a1"] and ps('{"since":["b2"],"before":["c3"]}', True) == []
    with pytest.raises(ApiError, match="No such container: nosuch"):
        ps('{"before":["nosuch"]}')
    assert ps('{"name":["^/web"]}', True) == ["b2", "a1"] and ps('{"name":["^so"]}') == ["c3"]
    assert ps('{"id":["2$"]}', True) == ["b2"]
    assert ps('{"exited":["3"]}') == [] and ps('{"exited":["3"]}', True) == ["b2"]
    with pytest.raises(ApiError, match="invalid filter 'exited=x'"):
        ps('{"exited":["x"]}')
    assert ps('{"health":["healthy"]}') == ["c3"] and ps('{"health":["none"]}') == ["a1"]
    with pytest.raises(ApiError, match="Unrecognised filter value for health: ill"):
        ps('{"health":["ill"]}')
    assert ps('{"is-task":["false"]}') == ["c3"] and ps('{"is-task":["true"]}') == ["a1"]
    with pytest.raises(ApiError, match=r"invalid filter 'is-task=\[maybe\]'"):
        ps('{"is-task":["maybe"]}')
    assert ps('{"ancestor":["busybox"]}', True) == ["b2", "a1"] and ps('{"ancestor":["other:1"]}') == ["c3"]
    assert ps('{"ancestor":["unknown"]}') == []
    assert ps('{"volume":["/data"]}') == ps('{"volume":["data"]}') == ["c3"] and ps('{"volume":["x"]}') == []
    assert ps('{"network":["lan"]}') == ps('{"network":["f00d"]}') == ["c3"] and ps('{"network":["wan"]}') == []
    assert ps('{"expose":["80"]}') == ps('{"expose":["50-60/udp"]}') == ["c3"] and ps('{"expose":["53"]}') == []
    assert ps('{"publish":["80"]}') == []                  # exposed, not published
    with pytest.raises(ApiError, match="should not contain ':'"):
        ps('{"publish":["8080:80"]}')
    with pytest.raises(ApiError, match="invalid port range"):
        ps('{"expose":["http"]}')
    assert summaries([c], now=40)[0]["Ports"] == [{"PrivatePort": 80, "Type": "tcp"},
                                                  {"PrivatePort": 53, "Type": "udp"}]


def test_inspect_shape() -> None:
    doc = inspect(view("a1", "web.1.a1"))
    assert doc["Name"] == "/web.1.a1" and doc["Path"] == "sleep" and doc["Args"] == ["9"]
    assert doc["State"]["Status"] == "running" and doc["State"]["Pid"] == 42
    assert doc["State"]["FinishedAt"] == "0001-01-01T00:00:00Z"     # running: never finished
    assert doc["Config"]["Labels"]["com.docker.swarm.task.id"] == "abc123" and doc["Image"].startswith("sha256:")
    assert doc["Config"]["Tty"] is False and doc["NetworkSettings"]["IPAddress"] == ""
    plain = view("a2", "web.2.a2")
    with_tty = replace(plain, config=replace(plain.config, tty=True))     # a service's --tty
    assert inspect(with_tty)["Config"]["Tty"] is True       # the docker CLI reads its logs raw by this


def test_ps_output_keeps_the_container_pids_and_the_spaces_of_the_command() -> None:
    out = ("UID PID PPID C STIME TTY TIME CMD\n"
           "root 10 1 0 00:01 ? 00:00:00 sleep 1000\n"
           "root 11 10 0 00:01 ? 00:00:00 sh -c echo  two\n"
           "root 99 1 0 00:01 ? 00:00:00 other\n")
    top = parse_ps(out, {10, 11})
    assert top["Titles"][:2] == ["UID", "PID"]
    assert [p[-1] for p in top["Processes"]] == ["sleep 1000", "sh -c echo  two"]
    with pytest.raises(ApiError, match="Couldn't find PID field"):
        parse_ps("USER CMD\n", {1})


def test_signals() -> None:
    assert parse_signal("SIGTERM") == parse_signal("term") == parse_signal("15") == 15
    assert parse_signal(None) == 9
    for bad in ("NOPE", "0", "99"):
        with pytest.raises(ApiError, match=f"Invalid signal: {bad}"):
            parse_signal(bad)


def test_cgroup_and_proc_parsers() -> None:
    net = parse_net_dev("Inter-|...\n face |...\n    lo: 1 2 0 0 0 0 0 0 3 4 0 0 0 0 0 0\n"
                        "  eth0: 100 5 1 2 0 0 0 0 200 6 3 4 0 0 0 0\n")
    assert net == {"eth0": {"rx_bytes": 100, "rx_packets": 5, "rx_errors": 1, "rx_dropped": 2,
                            "tx_bytes": 200, "tx_packets": 6, "tx_errors": 3, "tx_dropped": 4}}
    assert parse_blkio_v1("8:0 Read 4096\n8:0 Write 512\nTotal 4608\n") == [
        {"major": 8, "minor": 0, "op": "read", "value": 4096}, {"major": 8, "minor": 0, "op": "write", "value": 512}]
    assert parse_io_stat_v2("8:0 rbytes=10 wbytes=20 rios=1\n") == [
        {"major": 8, "minor": 0, "op": "read", "value": 10}, {"major": 8, "minor": 0, "op": "write", "value": 20}]
    assert system_cpu_usage("cpu  1 1 1 1 1 1 1 1 9 9\ncpu0 1 1\n") > 0
    doc = stats_doc("a1", "web.1.a1", None, None)
    assert doc["name"] == "/web.1.a1" and doc["read"].startswith("0001") and doc["memory_stats"] == {}


def test_exec_config_checks() -> None:
    config = ExecConfig.from_api({"Cmd": ["sh"], "Tty": True, "AttachStdin": True, "ConsoleSize": [30, 100],
                                  "Env": ["A=1"], "WorkingDir": "/tmp", "User": "nobody"})
    assert (config.cmd, config.tty, config.console_size, config.user) == (["sh"], True, (30, 100), "nobody")
    for body, text in (({}, "No exec command specified"), ({"Cmd": []}, "No exec command specified"),
                       ({"Cmd": ["x"], "Env": ["=bad"]}, "invalid environment variable"),
                       ({"Cmd": ["x"], "WorkingDir": "rel"}, "needs to be an absolute path"),
                       ([], "must be a JSON object")):
        with pytest.raises(ExecError, match=text) as error:
            ExecConfig.from_api(body)
        assert error.value.status == 400
