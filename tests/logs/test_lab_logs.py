"""`shoal service logs` and `docker service logs` on a lab (1 manager, 2 workers) with real
containers: every task's lines with the right prefixes, --tail, a task's own logs, --follow
streaming new lines until the client stops, timestamps, and logs read on a follower manager
(a worker promoted for the last test) through the leader's broker."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cli.lab import Lab
from tests.swarm.helpers import api, api_error, eventually, node_update, swarm_lab

IMAGE = "busybox:latest"
MANAGER = "manager-1"
SERVICE = "counter"
COUNTER = ["sh", "-c", "trap 'exit 0' TERM; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"]
LINE = re.compile(r"^(?:(?P<ts>\S+) )?(?P<svc>[\w-]+)\.(?P<slot>\d+)\.(?P<task>[0-9a-z]{12})@(?P<host>\S+)\s+\| "
                  r"line (?P<n>\d+)$")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with swarm_lab("lg", tmp_path_factory.mktemp("img"), managers=1, workers=2, image=IMAGE) as the_lab:
        spec = {"Name": SERVICE, "Mode": {"Replicated": {"Replicas": 3}},
                "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": COUNTER, "StopGracePeriod": 2_000_000_000},
                                 "Placement": {"MaxReplicas": 1}}}
        api(the_lab, MANAGER, "POST", "/services/create", spec)
        yield the_lab


def running_tasks(lab: Lab) -> list[dict[str, Any]]:
    tasks = api(lab, MANAGER, "GET", "/tasks", filters={"service": [SERVICE], "desired-state": ["running"]})
    return [t for t in tasks if t["Status"]["State"] == "running"]


@pytest.fixture(scope="module")
def tasks(lab: Lab) -> dict[str, dict[str, Any]]:
    """The service's 3 running tasks by 12-char ID, each with the hostname of its node."""
    found = eventually(lambda: (lambda r: r if len(r) == 3 else [])(running_tasks(lab)), timeout=40,
                       what="3 running tasks")
    hosts = {n["ID"]: n["Description"]["Hostname"] for n in api(lab, MANAGER, "GET", "/nodes")}
    return {t["ID"][:12]: {**t, "host": hosts[t["NodeID"]]} for t in found}


def shoal(lab: Lab, node: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return lab.exec(node, [sys.executable, "-m", "cli.main", *args], timeout=timeout)


def parsed(output: str) -> dict[str, list[int]]:
    """Line numbers per task (12-char ID), checking every line's prefix is well formed."""
    out: dict[str, list[int]] = {}
    for line in output.splitlines():
        match = LINE.match(line)
        assert match, f"unexpected log line {line!r}"
        assert match["svc"] == SERVICE
        out.setdefault(match["task"], []).append(int(match["n"]))
    return out


def check_prefixes(output: str, tasks: dict[str, dict[str, Any]]) -> None:
    for line in output.splitlines():
        match = LINE.match(line)
        assert match, line
        task = tasks[match["task"]]
        assert (int(match["slot"]), match["host"]) == (task["Slot"], task["host"]), line


def logs_of_all(lab: Lab, node: str, *args: str, minimum: int = 3) -> str:
    """`shoal service logs` output once every task has at least `minimum` lines."""
    def ready() -> str:
        proc = shoal(lab, node, "service", "logs", *args, SERVICE)
        assert proc.returncode == 0, proc.stderr
        counts = parsed(proc.stdout)
        return proc.stdout if len(counts) == 3 and all(len(v) >= minimum for v in counts.values()) else ""

    return eventually(ready, timeout=30, what="log lines from all 3 tasks")


def test_service_logs_show_every_task_with_its_prefix(lab: Lab, tasks: dict[str, dict[str, Any]]) -> None:
    output = logs_of_all(lab, MANAGER)
    per_task = parsed(output)
    assert set(per_task) == set(tasks)
    assert {t["host"] for t in tasks.values()} == {"manager-1", "worker-1", "worker-2"}
    check_prefixes(output, tasks)
    for numbers in per_task.values():
        assert numbers == list(range(len(numbers))), "each task's lines come whole and in order"


def test_tail_limits_lines_per_task_and_a_task_can_be_read_alone(lab: Lab, tasks: dict[str, dict[str, Any]]) -> None:
    logs_of_all(lab, MANAGER, minimum=3)
    proc = shoal(lab, MANAGER, "service", "logs", "--tail", "2", SERVICE)
    assert proc.returncode == 0, proc.stderr
    per_task = parsed(proc.stdout)
    assert set(per_task) == set(tasks)
    for numbers in per_task.values():
        assert len(numbers) == 2 and numbers[1] == numbers[0] + 1 and numbers[0] >= 1

    one = next(iter(tasks.values()))
    proc = shoal(lab, MANAGER, "service", "logs", "--tail", "3", one["ID"])
    assert proc.returncode == 0, proc.stderr
    assert list(parsed(proc.stdout)) == [one["ID"][:12]] and len(parsed(proc.stdout)[one["ID"][:12]]) == 3

    proc = shoal(lab, MANAGER, "service", "logs", "nosuchthing")
    assert proc.returncode == 1 and "no such service or task: nosuchthing" in proc.stderr
    error = api_error(lab, MANAGER, "GET", "/services/nosuch/logs", stdout="1")
    assert (error.status, error.message) == (404, "service nosuch not found")
    error = api_error(lab, MANAGER, "GET", "/tasks/nosuch/logs", stdout="1")
    assert (error.status, error.message) == (404, "task nosuch not found")
    error = api_error(lab, MANAGER, "GET", f"/services/{SERVICE}/logs")
    assert error.status == 400 and "at least one stream" in error.message
    error = api_error(lab, "worker-1", "GET", f"/services/{SERVICE}/logs", stdout="1")
    assert error.status == 503 and "Worker nodes can't be used" in error.message


WITH_DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                       "os.execvp(sys.argv[1], sys.argv[1:])")


def follow_until(lab: Lab, node: str, beyond: dict[str, int], timeout: float = 20.0) -> dict[str, list[int]]:
    """Run `shoal service logs -f` until every task printed a line numbered above `beyond`,
    then interrupt it; it must exit promptly."""
    argv = lab.exec_argv(node, [sys.executable, "-m", "cli.main", "service", "logs", "-f", "--tail", "1", SERVICE])
    # As from a terminal: SIGINT at its default even when this test runs with it ignored (a
    # background job inherits SIGINT ignored, and an ignored signal stays ignored across exec).
    proc = subprocess.Popen([sys.executable, "-c", WITH_DEFAULT_SIGINT, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    seen: dict[str, list[int]] = {}
    buffer = b""
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while not (len(seen) == len(beyond) and all(max(seen[t]) > n for t, n in beyond.items() if t in seen)):
            left = deadline - time.monotonic()
            assert left > 0, f"follow did not stream new lines in {timeout}s: {seen}"
            if selector.select(left):
                chunk = proc.stdout.read() or b""
                if not chunk and proc.poll() is not None:
                    error = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise AssertionError(f"follow ended early: {error}")
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for task, numbers in parsed(b"\n".join(lines).decode()).items():
                    seen.setdefault(task, []).extend(numbers)
        selector.close()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        os.set_blocking(proc.stdout.fileno(), True)   # drain what it still writes, as a terminal does
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            raise AssertionError(f"shoal service logs -f did not stop on SIGINT: {stderr[-500:]!r}") from None
    return seen


def test_follow_streams_new_lines_until_the_client_stops(lab: Lab, tasks: dict[str, dict[str, Any]]) -> None:
    now = parsed(logs_of_all(lab, MANAGER))
    seen = follow_until(lab, MANAGER, {t: max(n) + 5 for t, n in now.items()})
    for numbers in seen.values():
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "no line lost or repeated"


def test_docker_cli_service_logs(lab: Lab, tasks: dict[str, dict[str, Any]]) -> None:
    logs_of_all(lab, MANAGER)
    proc = lab.exec(MANAGER, ["docker", "service", "logs", SERVICE], timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert set(parsed(proc.stdout)) == set(tasks)
    check_prefixes(proc.stdout, tasks)

    proc = lab.exec(MANAGER, ["docker", "service", "logs", "--tail", "1", "-t", SERVICE], timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, lines
    for line in lines:
        match = LINE.match(line)
        assert match and match["ts"], line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", match["ts"]), line

    one = next(iter(tasks.values()))
    proc = lab.exec(MANAGER, ["docker", "service", "logs", "--tail", "2", one["ID"]], timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert list(parsed(proc.stdout)) == [one["ID"][:12]] and len(proc.stdout.splitlines()) == 2


def test_logs_on_a_follower_manager_come_through_the_leader(lab: Lab, tasks: dict[str, dict[str, Any]]) -> None:
    node_update(lab, MANAGER, "worker-2", lambda spec: spec.__setitem__("Role", "manager"))
    eventually(lambda: api(lab, "worker-2", "GET", "/services"), timeout=40, what="worker-2 to serve as a manager")
    output = logs_of_all(lab, "worker-2")
    assert set(parsed(output)) == set(tasks)
    check_prefixes(output, tasks)
    now = parsed(output)
    follow_until(lab, "worker-2", {t: max(n) + 3 for t, n in now.items()})
