"""Service VIPs and the routing mesh on a lab of 3 managers and 2 workers (issue 12): published
ports answer on every host (one running none of the tasks included, and localhost:P inside each),
the task sees the client's own address, VIPs balance any port, and updates, scaling and drains
lose no request."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.lab import Lab
from tests.swarm.helpers import api, api_error, eventually, node_update, set_heartbeat, swarm_lab

IMAGE = "busybox:latest"
MANAGER = "manager-1"
HOSTS = ("manager-1", "manager-2", "manager-3", "worker-1", "worker-2")
# Answers "<hostname> <client address>" (a CGI script of busybox httpd) on its port.
def web(port: int = 80) -> list[str]:
    return ["sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\n"
                        "echo $(hostname) $REMOTE_ADDR\\n' > /www/cgi-bin/who && chmod +x /www/cgi-bin/who "
                        f"&& trap 'exit 0' TERM; httpd -f -p {port} -h /www & wait"]


SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
CLIENT = Path(__file__).with_name("mesh_client.py")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with swarm_lab("m", tmp_path_factory.mktemp("img"), managers=3, workers=2, image=IMAGE) as the_lab:
        set_heartbeat(the_lab, MANAGER, 1)
        yield the_lab


def create(lab: Lab, name: str, args: list[str], replicas: int, ports: list[dict[str, Any]] | None = None,
           networks: list[str] | None = None, max_per_node: int = 0, **extra: Any) -> str:
    spec: dict[str, Any] = {
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": args, "StopGracePeriod": 3_000_000_000},
                         "Networks": [{"Target": n} for n in networks or []],
                         "Placement": {"MaxReplicas": max_per_node} if max_per_node else {}},
        "Mode": {"Replicated": {"Replicas": replicas}},
        "EndpointSpec": {"Ports": ports or []},
        **extra,
    }
    return str(api(lab, MANAGER, "POST", "/services/create", spec)["ID"])


def running(lab: Lab, name: str) -> list[dict[str, Any]]:
    tasks = api(lab, MANAGER, "GET", "/tasks", filters={"service": [name], "desired-state": ["running"]})
    return [t for t in tasks if t["Status"]["State"] == "running"]


def converged(lab: Lab, name: str, count: int) -> list[dict[str, Any]]:
    return eventually(lambda: (lambda r: r if len(r) == count else [])(running(lab, name)), timeout=60,
                      what=f"{count} running tasks of {name}")


def hosts_of(lab: Lab, tasks: list[dict[str, Any]]) -> set[str]:
    nodes = {n["ID"]: n["Description"]["Hostname"] for n in api(lab, MANAGER, "GET", "/nodes")}
    return {nodes[t["NodeID"]] for t in tasks}


def fetch(lab: Lab, via: str, address: str, port: int, path: str = "/cgi-bin/who") -> tuple[str, str]:
    """GET http://address:port/path from host `via`'s namespace: (task hostname, client address
    the task saw); ("", error) when it failed."""
    code = ("import sys, urllib.request\n"
            "try:\n"
            f"    print(urllib.request.urlopen('http://{address}:{port}{path}', timeout=3).read().decode().strip())\n"
            "except Exception as e:\n"
            "    print('ERR', e)\n")
    out = lab.exec(via, [sys.executable, "-c", code], timeout=30).stdout.strip()
    if out.startswith("ERR") or " " not in out:
        return "", out
    name, peer = out.split(" ", 1)
    return name, peer.removeprefix("[").removesuffix("]").removeprefix("::ffff:")   # httpd listens on [::]


def update(lab: Lab, name: str, change: Any) -> None:
    current = api(lab, MANAGER, "GET", f"/services/{name}")
    spec = current["Spec"]
    change(spec)
    api(lab, MANAGER, "POST", f"/services/{current['ID']}/update", spec, version=current["Version"]["Index"])


def test_a_published_port_answers_on_every_host_with_the_clients_address(lab: Lab) -> None:
    create(lab, "pub", web(), 2, [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}], max_per_node=1)
    tasks = converged(lab, "pub", 2)
    names = {t["ID"][:12] for t in tasks}
    idle = [h for h in HOSTS if h not in hosts_of(lab, tasks)]
    assert idle, "some hosts run none of the tasks"
    for host in HOSTS:
        target = lab.node(host).address
        for via in {host, "manager-1" if host != "manager-1" else "manager-2"}:
            answered = eventually(lambda v=via, t=target: fetch(lab, v, t, 8080), timeout=20,
                                  what=f"{host}:8080 from {via}")
            name, peer = answered
            assert name in names, answered
            if via != host:
                assert peer == lab.node(via).address, f"the task saw {peer}, not the client {via}"
        name, _ = fetch(lab, host, "127.0.0.1", 8080)
        assert name in names, f"localhost:8080 on {host}"
    seen = {fetch(lab, "manager-1", lab.node(idle[0]).address, 8080)[0] for _ in range(6)}
    assert seen == names, "connections are spread over both tasks"
    # The port is reserved on every host: nothing else binds it.
    bound = lab.exec(idle[0], [sys.executable, "-c", "import socket; socket.socket().bind(('0.0.0.0', 8080))"])
    assert "Address already in use" in bound.stderr


def test_two_services_cannot_publish_one_port(lab: Lab) -> None:
    create(lab, "first", SLEEPER, 1, [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8181}])
    err = api_error(lab, MANAGER, "POST", "/services/create", {
        "Name": "second", "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": SLEEPER}},
        "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8181}]}})
    assert err.status == 400 and "port '8181' is already in use by service 'first'" in err.message, err.message


@contextlib.contextmanager
def load(lab: Lab, via: str, url: str, tmp: Path, report: dict[str, Any]) -> Iterator[None]:
    """Continuous requests to `url` from host `via` while the block runs; `report` gets the
    client's figures (bounded: 120 s, 6,000 requests)."""
    stop = tmp / "stop"
    stop.unlink(missing_ok=True)
    started = tmp / "stop.started"
    started.unlink(missing_ok=True)
    proc = subprocess.Popen(lab.exec_argv(via, [sys.executable, str(CLIENT), url, str(stop), "120", "6000"]),
                            stdout=subprocess.PIPE, text=True)
    try:
        eventually(started.exists, timeout=20, what="the load client's first answer")
        yield
    finally:
        stop.write_text("stop")
        out, _ = proc.communicate(timeout=60)
        report.update(json.loads(out.strip().splitlines()[-1]) if out.strip() else {"requests": 0, "failures": -1})
        print(f"load through {url}: {report.get('requests')} requests, {report.get('failures')} failed",
              report.get("errors") or "")


def settled(lab: Lab, name: str, count: int) -> None:
    """The service's update (if any) is over and `count` tasks run."""
    def done() -> bool:
        state = (api(lab, MANAGER, "GET", f"/services/{name}").get("UpdateStatus") or {}).get("State", "completed")
        return state == "completed" and len(running(lab, name)) == count and \
            len(api(lab, MANAGER, "GET", "/tasks", filters={"service": [name], "desired-state": ["running"]})) == count
    eventually(done, timeout=90, what=f"{name} to settle at {count} tasks")


def idle_host(lab: Lab, name: str) -> str:
    busy = hosts_of(lab, running(lab, name))
    return next(h for h in HOSTS if h not in busy)


def check_no_loss(lab: Lab, tmp: Path, name: str, port: int, what: str, change: Callable[[], None],
                  count: int) -> None:
    via = idle_host(lab, name)
    client = next(h for h in HOSTS if h != via)
    report: dict[str, Any] = {}
    with load(lab, client, f"http://{lab.node(via).address}:{port}/cgi-bin/who", tmp, report):
        change()
        settled(lab, name, count)
    print(f"{what}: {report['requests']} requests through {via}, {report['failures']} failed")
    assert report["failures"] == 0, f"{what}: {report['failures']} failed: {report['errors']}"
    assert report["requests"] > 1, report


def test_updates_scaling_and_drain_lose_no_request(lab: Lab, tmp_path: Path) -> None:
    create(lab, "zd", web(), 3, [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8090}], max_per_node=1,
           UpdateConfig={"Parallelism": 1, "Order": "stop-first", "Delay": 0})
    settled(lab, "zd", 3)

    def env(value: str, order: str) -> Callable[[], None]:
        def change(spec: dict[str, Any]) -> None:
            spec["TaskTemplate"]["ContainerSpec"]["Env"] = [f"REV={value}"]
            spec["UpdateConfig"] = {"Parallelism": 1, "Order": order, "Delay": 0}
        return lambda: update(lab, "zd", change)

    def scale(n: int) -> Callable[[], None]:
        return lambda: update(lab, "zd", lambda spec: spec["Mode"]["Replicated"].update(Replicas=n))

    check_no_loss(lab, tmp_path, "zd", 8090, "rolling update, stop-first", env("2", "stop-first"), 3)
    check_no_loss(lab, tmp_path, "zd", 8090, "rolling update, start-first", env("3", "start-first"), 3)
    check_no_loss(lab, tmp_path, "zd", 8090, "scale 3 to 1", scale(1), 1)
    check_no_loss(lab, tmp_path, "zd", 8090, "scale 1 to 3", scale(3), 3)
    drained = sorted(hosts_of(lab, running(lab, "zd")))[0]

    def drain() -> None:
        node_update(lab, MANAGER, drained, lambda spec: spec.update(Availability="drain"))

    try:
        check_no_loss(lab, tmp_path, "zd", 8090, f"drain of {drained}", drain, 3)
        assert drained not in hosts_of(lab, running(lab, "zd"))
    finally:
        node_update(lab, MANAGER, drained, lambda spec: spec.update(Availability="active"))
