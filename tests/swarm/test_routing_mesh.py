"""Service VIPs and the routing mesh on a lab of 3 managers and 2 workers (issue 12): published
ports answer on every host (one running none of the tasks included, and localhost:P inside each),
the task sees the client's own address, VIPs balance any port, and updates, scaling and drains
lose no request, through a published port and through a VIP from a task."""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.lab import Lab
from tests.swarm.helpers import (
    api,
    api_error,
    converged,
    eventually,
    in_task,
    node_update,
    running,
    set_heartbeat,
    swarm_lab,
)

IMAGE = "busybox:latest"
MANAGER = "manager-1"
HOSTS = ("manager-1", "manager-2", "manager-3", "worker-1", "worker-2")


def web(*ports: int) -> list[str]:
    """Answers "<hostname> <client address>" (a CGI script of busybox httpd) on each port (80)."""
    servers = " ".join(f"httpd -f -p {port} -h /www &" for port in ports or (80,))
    return ["sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\n"
                        "echo $(hostname) $REMOTE_ADDR\\n' > /www/cgi-bin/who && chmod +x /www/cgi-bin/who "
                        f"&& trap 'exit 0' TERM; {servers} wait"]


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


def test_a_published_port_answers_on_every_host_with_the_clients_address(lab: Lab, tmp_path: Path) -> None:
    created = lab.exec(MANAGER, ["env", f"DOCKER_CONFIG={tmp_path}", "docker", "service", "create", "--detach",
                                 "--name", "pub", "-p", "8080:80", "--replicas", "2", "--replicas-max-per-node", "1",
                                 IMAGE, *web()])
    assert created.returncode == 0, created.stderr
    ls = lab.exec(MANAGER, ["env", f"DOCKER_CONFIG={tmp_path}", "docker", "service", "ls"]).stdout
    assert "*:8080->80/tcp" in ls, ls
    tasks = converged(lab, "pub", 2)
    names = {t["ID"][:12] for t in tasks}
    idle = [h for h in HOSTS if h not in hosts_of(lab, tasks)]
    assert idle, "some hosts run none of the tasks"
    for host in HOSTS:
        target = lab.node(host).address
        for via in {host, "manager-1" if host != "manager-1" else "manager-2"}:
            answered = eventually(functools.partial(fetch, lab, via, target, 8080), timeout=20,
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
def load(lab: Lab, via: str, url: str, tmp: Path, report: dict[str, Any], netns: Path | None = None) -> Iterator[None]:
    """Continuous requests to `url` from host `via` (or from namespace `netns` on it, e.g. a
    task's) while the block runs; `report` gets the client's figures (bounded: 120 s, 6,000
    requests)."""
    stop = tmp / "stop"
    stop.unlink(missing_ok=True)
    started = tmp / "stop.started"
    started.unlink(missing_ok=True)
    inside = ["nsenter", f"--net={netns}", "--"] if netns is not None else []
    proc = subprocess.Popen(lab.exec_argv(via, [*inside, sys.executable, str(CLIENT), url, str(stop), "120", "6000"]),
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


def test_a_vip_loses_no_request_while_its_service_updates_and_scales_down(lab: Lab, tmp_path: Path) -> None:
    """A client task's connections to a VIP are balanced in its own namespace: a task leaving
    drains there too, and the manager stops its container only once every node (the client's
    with it) has taken it out of rotation."""
    net = str(api(lab, MANAGER, "POST", "/networks/create", {"Name": "zvnet", "Driver": "overlay"})["Id"])
    create(lab, "zv", web(), 3, networks=["zvnet"], max_per_node=1,
           UpdateConfig={"Parallelism": 1, "Order": "stop-first", "Delay": 0})
    create(lab, "zvc", SLEEPER, 1, networks=["zvnet"])
    settled(lab, "zv", 3)
    client = converged(lab, "zvc", 1)[0]
    (home,) = hosts_of(lab, [client])
    netns = Path(lab.node(home).data_dir) / "network" / "netns" / f"s-{client['ID']}"
    vip = next(str(v["Addr"]).split("/")[0] for v in api(lab, MANAGER, "GET", "/services/zv")["Endpoint"]["VirtualIPs"]
               if v["NetworkID"] == net)

    def rolling_update(spec: dict[str, Any]) -> None:
        spec["TaskTemplate"]["ContainerSpec"]["Env"] = ["REV=2"]

    url = f"http://{vip}/cgi-bin/who"
    for what, change, count in (("rolling update, stop-first", rolling_update, 3),
                                ("scale 3 to 1", lambda spec: spec["Mode"]["Replicated"].update(Replicas=1), 1)):
        report: dict[str, Any] = {}
        with load(lab, home, url, tmp_path, report, netns=netns):
            update(lab, "zv", change)
            settled(lab, "zv", count)
        # and after it, a bounded run: a table still holding a task that is gone fails some
        after = json.loads(lab.exec(home, ["nsenter", f"--net={netns}", "--", sys.executable, str(CLIENT), url,
                                           str(tmp_path / "never"), "60", "60"], timeout=90).stdout.splitlines()[-1])
        print(f"{what}: {report['requests']} requests from a task through the VIP during it, {report['failures']} "
              f"failed; {after['requests']} after it, {after['failures']} failed")
        assert report["failures"] == 0, f"{what}: {report['failures']} failed: {report['errors']}"
        assert after["failures"] == 0, f"after {what}: {after['failures']} failed: {after['errors']}"
        assert report["requests"] > 1 and set(after["answered_by"]) == {t["ID"][:12] for t in running(lab, "zv")}


def test_a_vip_balances_every_port_answers_ping_and_dnsrr_gives_the_tasks(lab: Lab) -> None:
    net = str(api(lab, MANAGER, "POST", "/networks/create", {"Name": "vipnet", "Driver": "overlay"})["Id"])
    create(lab, "vweb", web(80, 8081), 2, networks=["vipnet"], max_per_node=1)
    create(lab, "vcl", SLEEPER, 1, networks=["vipnet"])
    create(lab, "vrr", SLEEPER, 2, networks=["vipnet"], EndpointSpec={"Mode": "dnsrr"})
    webs = converged(lab, "vweb", 2)
    client = converged(lab, "vcl", 1)[0]
    endpoint = api(lab, MANAGER, "GET", "/services/vweb")["Endpoint"]
    vip = next(str(v["Addr"]).split("/")[0] for v in endpoint["VirtualIPs"] if v["NetworkID"] == net)
    names = {t["ID"][:12] for t in webs}
    own = next(str(a["Addresses"][0]).split("/")[0] for a in client["NetworksAttachments"]
               if a["Network"]["ID"] == net)

    def ask(url: str) -> tuple[str, str]:
        """(the task that answered, the client address it saw)"""
        out = in_task(lab, client, ["timeout", "3", "wget", "-qO-", url]).stdout.split()
        return (out[0], out[1].strip("[]").removeprefix("::ffff:")) if len(out) == 2 else ("", " ".join(out))

    def answered(url: str) -> tuple[str, str] | None:
        answer = ask(url)
        return answer if answer[0] else None

    for port in (80, 8081):
        first = eventually(functools.partial(answered, f"http://vweb:{port}/cgi-bin/who"), timeout=20,
                           what=f"vweb:{port}")
        answers = {first} | {ask(f"http://{vip}:{port}/cgi-bin/who") for _ in range(5)}
        assert {name for name, _ in answers} == names, f"port {port} through the VIP reached {answers}, not {names}"
        assert {peer for _, peer in answers} == {own}, f"the tasks saw {answers}, not the client task's {own}"
    assert in_task(lab, client, ["busybox", "ping", "-c", "1", "-W", "2", vip]).returncode == 0, "ping to the VIP"
    rr = {str(a["Addresses"][0]).split("/")[0] for t in converged(lab, "vrr", 2) for a in t["NetworksAttachments"]
          if a["Network"]["ID"] == net}
    out = in_task(lab, client, ["nslookup", "vrr"]).stdout.split("Name:", 1)[-1]
    assert {line.split()[-1] for line in out.splitlines() if line.strip().startswith("Address")} == rr


def test_a_host_mode_port_is_on_its_node_only(lab: Lab) -> None:
    create(lab, "hm", web(), 1, [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8282, "PublishMode": "host"}])
    task = converged(lab, "hm", 1)[0]
    (home,) = hosts_of(lab, [task])
    other = next(h for h in HOSTS if h != home)
    name, _ = eventually(lambda: fetch(lab, other, lab.node(home).address, 8282), timeout=20, what="the host port")
    assert name == task["ID"][:12]
    assert fetch(lab, home, "127.0.0.1", 8282)[0] == name, "localhost:8282 on its node"
    assert fetch(lab, home, lab.node(other).address, 8282)[0] == "", "not published on the other nodes"
    status = eventually(lambda: running(lab, "hm")[0]["Status"].get("PortStatus"), timeout=10, what="PortStatus")
    assert status["Ports"][0]["PublishedPort"] == 8282


def test_a_dead_worker_costs_requests_only_until_it_is_detected(lab: Lab, tmp_path: Path) -> None:
    """worker-2 drops off the network, then its daemon is killed: connections the mesh sends
    to its task fail until the node is declared down (keepalive, ~3 s), then none do."""
    create(lab, "kw", web(), 2, [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8383}], max_per_node=1,
           TaskTemplate={"ContainerSpec": {"Image": IMAGE, "Args": web(), "StopGracePeriod": 3_000_000_000},
                         "Placement": {"Constraints": ["node.role==worker"], "MaxReplicas": 1}})
    settled(lab, "kw", 2)
    assert hosts_of(lab, running(lab, "kw")) == {"worker-1", "worker-2"}
    url = f"http://{lab.node('manager-3').address}:8383/cgi-bin/who"
    victim = "worker-2"
    try:
        during: dict[str, Any] = {}
        with load(lab, "manager-2", url, tmp_path, during):
            for other in HOSTS:
                if other != victim:
                    lab.partition(victim, other)
            lab.kill(victim)
            eventually(lambda: victim not in hosts_of(lab, running(lab, "kw")), timeout=30,
                       what="the dead worker's task to leave the running set")
        after: dict[str, Any] = {}
        with load(lab, "manager-2", url, tmp_path, after):     # (the replacement has nowhere to go)
            assert {fetch(lab, "manager-1", lab.node("manager-3").address, 8383)[0] for _ in range(6)} != {""}
        print(f"worker-2 dead: {during['requests']} requests, {during['failures']} failed until it was detected; "
              f"then {after['requests']} requests, {after['failures']} failed")
        assert after["failures"] == 0, after
    finally:
        lab.heal()
        lab.start(victim)


def test_publishing_a_port_later_moves_the_tasks_onto_ingress(lab: Lab) -> None:
    """`service update --publish-add` on a service that published nothing: its tasks have no
    address on ingress, so they are replaced (rolling, as Docker does) and the port answers."""
    create(lab, "late", web(), 2, max_per_node=1)
    before = {t["ID"] for t in converged(lab, "late", 2)}
    update(lab, "late", lambda spec: spec.__setitem__(
        "EndpointSpec", {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8484}]}))
    settled(lab, "late", 2)
    after = running(lab, "late")
    assert not before & {t["ID"] for t in after}, "every task was replaced"
    idle = idle_host(lab, "late")
    name, _ = eventually(lambda: fetch(lab, "manager-1" if idle != "manager-1" else "manager-2",
                                       lab.node(idle).address, 8484), timeout=20, what="the port added later")
    assert name in {t["ID"][:12] for t in after}


def test_the_mesh_keeps_serving_while_a_hosts_daemon_is_killed_and_restarted(lab: Lab, tmp_path: Path) -> None:
    """The data path is the kernel's: kill -9 of the daemon of the host the requests go through,
    and its restart (which adopts the tables and reserves the port again), lose no request."""
    create(lab, "kept", web(), 2, [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8585}], max_per_node=1)
    settled(lab, "kept", 2)
    busy = hosts_of(lab, running(lab, "kept"))
    via = next(h for h in ("manager-2", "manager-3", "worker-1", "worker-2") if h not in busy)
    client = "manager-1"
    report: dict[str, Any] = {}
    with load(lab, client, f"http://{lab.node(via).address}:8585/cgi-bin/who", tmp_path, report):
        lab.kill(via)
        lab.start(via)
        eventually(lambda: "Address already in use" in lab.exec(via, [sys.executable, "-c",
                   "import socket; socket.socket().bind(('0.0.0.0', 8585))"]).stderr,
                   timeout=20, what="the restarted daemon to reserve the port again")
    print(f"kill -9 and restart of {via}'s daemon: {report['requests']} requests, {report['failures']} failed")
    assert report["failures"] == 0, report


def test_a_host_firewall_that_drops_forwarded_traffic_does_not_stop_the_mesh(lab: Lab) -> None:
    """ufw, or Docker's iptables rules, leave the forward chain's policy at drop: the daemon lets
    its gateway bridge through (as Docker does for its bridges), so the mesh and the tasks' way
    out still work on that host."""
    create(lab, "fw", web(), 1, [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8686}],
           TaskTemplate={"ContainerSpec": {"Image": IMAGE, "Args": web()},
                         "Placement": {"Constraints": ["node.role==manager"]}})
    settled(lab, "fw", 1)
    host = "worker-1"       # a worker: its restart leaves Raft alone
    firewall = "table ip filter { chain FORWARD { type filter hook forward priority 0; policy drop; }; }"
    assert lab.exec(host, ["sh", "-c", f"echo '{firewall}' | nft -f -"]).returncode == 0
    try:
        lab.kill(host)
        lab.start(host)      # the firewall was there first: the daemon opens its way at start
        client = next(h for h in HOSTS if h != host)
        name, _ = eventually(lambda: fetch(lab, client, lab.node(host).address, 8686), timeout=20,
                             what="the published port through a host whose forward policy drops")
        assert name == running(lab, "fw")[0]["ID"][:12]
        rules = lab.exec(host, ["nft", "list", "chain", "ip", "filter", "FORWARD"]).stdout
        assert rules.count('comment "shoal-gw:shoal_gwbridge"') == 3, rules
    finally:
        lab.exec(host, ["nft", "delete", "table", "ip", "filter"])
