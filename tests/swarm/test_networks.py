"""Overlay networks on a lab of 3 managers and 2 workers: real containers, real VXLAN, the
embedded DNS, isolation, internal networks, MTU, live restore and Docker's errors (issue 11)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cli.lab import Lab
from cli.lab import net as lab_net
from tests.swarm.helpers import (
    api,
    api_error,
    converged,
    eventually,
    host_of,
    in_task,
    running,
    set_heartbeat,
    swarm_lab,
)

IMAGE = "busybox:latest"
MANAGER = "manager-1"
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
# Serves its own hostname at / and a 64 KiB file at /big (the same bytes on every task).
WEB = ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && seq 1 20000 | head -c 65536 > /www/big "
                   "&& trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]
OUTSIDE_PORT = 18080


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with swarm_lab("n", tmp_path_factory.mktemp("img"), managers=3, workers=2, image=IMAGE) as the_lab:
        set_heartbeat(the_lab, MANAGER, 1)
        yield the_lab


def network(lab: Lab, name: str, **extra: Any) -> str:
    return str(api(lab, MANAGER, "POST", "/networks/create", {"Name": name, "Driver": "overlay", **extra})["Id"])


def service(lab: Lab, name: str, args: list[str], replicas: int, networks: list[str],
            max_per_node: int = 0, endpoint_mode: str = "vip") -> str:
    spec: dict[str, Any] = {
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": args, "StopGracePeriod": 2_000_000_000},
                         "Networks": [{"Target": n} for n in networks]},
        "Mode": {"Replicated": {"Replicas": replicas}},
        "EndpointSpec": {"Mode": endpoint_mode},
    }
    if max_per_node:
        spec["TaskTemplate"]["Placement"] = {"MaxReplicas": max_per_node}
    return str(api(lab, MANAGER, "POST", "/services/create", spec)["ID"])






def address(task: dict[str, Any], network_id: str) -> str:
    for attachment in task["NetworksAttachments"]:
        if attachment["Network"]["ID"] == network_id:
            return str(attachment["Addresses"][0]).split("/")[0]
    raise AssertionError(f"task {task['ID']} has no address on {network_id}")


def vip(lab: Lab, name: str, network_id: str) -> str:
    """The service's virtual IP on the network (the allocator writes it with the service)."""
    endpoint = api(lab, MANAGER, "GET", f"/services/{name}")["Endpoint"]
    return next(str(v["Addr"]).split("/")[0] for v in endpoint["VirtualIPs"] if v["NetworkID"] == network_id)


def lookup(lab: Lab, task: dict[str, Any], name: str) -> set[str]:
    """The addresses `name` resolves to inside the task (busybox nslookup via 127.0.0.11)."""
    out = in_task(lab, task, ["nslookup", name]).stdout
    answers = out.split("Name:", 1)[1] if "Name:" in out else ""
    return {line.split()[-1] for line in answers.splitlines() if line.strip().startswith("Address")}


def test_services_reach_each_other_by_name_across_hosts_and_scale_is_seen_at_once(lab: Lab) -> None:
    app = network(lab, "app")
    service(lab, "web", WEB, 2, ["app"])
    service(lab, "client", SLEEPER, 1, ["app"])
    service(lab, "rr", SLEEPER, 2, ["app"], endpoint_mode="dnsrr")
    webs = converged(lab, "web", 2)
    client = converged(lab, "client", 1)[0]
    assert api(lab, MANAGER, "GET", f"/services/{'web'}")["Spec"]["TaskTemplate"]["Networks"] == [{"Target": app}]
    web_ips = {address(t, app) for t in webs}
    web_vip = vip(lab, "web", app)
    assert web_vip not in web_ips
    assert lookup(lab, client, "tasks.web") == web_ips
    assert lookup(lab, client, "web") == {web_vip}        # vip mode: the service name gives its VIP
    assert lookup(lab, client, "WEB.app") == {web_vip}    # case-insensitive, and name.<network>
    rr_ips = {address(t, app) for t in converged(lab, "rr", 2)}
    assert lookup(lab, client, "rr") == rr_ips == lookup(lab, client, "tasks.rr")   # dnsrr: the tasks'
    assert "VirtualIPs" not in api(lab, MANAGER, "GET", "/services/rr")["Endpoint"]
    # every task answers over the overlay, wherever it runs (at least one is on another host)
    assert {host_of(lab, t) for t in webs} != {host_of(lab, client)}
    names = {in_task(lab, client, ["wget", "-qO-", f"http://{ip}/"]).stdout.strip() for ip in web_ips}
    assert names == {t["ID"][:12] for t in webs}
    # inside: MTU 1450, MAC 02:42 + the address, resolv.conf as Docker writes it
    assert in_task(lab, client, ["cat", "/sys/class/net/eth0/mtu"]).stdout.strip() == "1450"
    mine = address(client, app)
    mac = "02:42:" + ":".join(f"{int(b):02x}" for b in mine.split("."))
    assert in_task(lab, client, ["cat", "/sys/class/net/eth0/address"]).stdout.strip() == mac
    resolv = in_task(lab, client, ["cat", "/etc/resolv.conf"]).stdout
    assert "nameserver 127.0.0.11" in resolv and "ndots:0" in resolv
    # a 64 KiB body crosses hosts intact
    remote = next(t for t in webs if host_of(lab, t) != host_of(lab, client))
    body = in_task(lab, client, ["wget", "-qO-", f"http://{address(remote, app)}/big"]).stdout
    expected = subprocess.run(["sh", "-c", "seq 1 20000 | head -c 65536"], capture_output=True, text=True).stdout
    assert body == expected and len(body) == 65536

    current = api(lab, MANAGER, "GET", "/services/web")
    spec = current["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = 5
    api(lab, MANAGER, "POST", f"/services/{current['ID']}/update", spec, version=current["Version"]["Index"])
    five = converged(lab, "web", 5)
    seen = time.monotonic()
    all_ips = {address(t, app) for t in five}
    eventually(lambda: lookup(lab, client, "tasks.web") == all_ips, timeout=5, what="tasks.web to list all five")
    lag = time.monotonic() - seen
    assert lag < 2.0, f"DNS took {lag:.2f}s after the tasks were reported running"


def test_networks_are_isolated_and_internal_ones_have_no_way_out(lab: Lab) -> None:
    network(lab, "left")
    network(lab, "right")
    network(lab, "inner", Internal=True)
    service(lab, "l", SLEEPER, 1, ["left"])
    service(lab, "r", WEB, 1, ["right"])
    service(lab, "in", SLEEPER, 1, ["inner"])
    left = converged(lab, "l", 1)[0]
    right = converged(lab, "r", 1)[0]
    inner = converged(lab, "in", 1)[0]
    right_ip = address(right, api(lab, MANAGER, "GET", "/networks/right")["Id"])
    # wget fails (1) or is cut by timeout (143); anything else (runc exec failing, 255) is no proof
    assert in_task(lab, left, ["timeout", "2", "wget", "-qO-", f"http://{right_ip}/"]).returncode in (1, 143)
    assert lookup(lab, left, "tasks.r") == set(), "a service on another network is not in the DNS"
    # the outside: a server in manager-1's own namespace (an address of the lab, nothing beyond)
    outside = lab.node(MANAGER)
    server = subprocess.Popen([*lab_net.enter(outside.ns), sys.executable, "-m", "http.server", "--bind",
                               outside.address, str(OUTSIDE_PORT)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://{outside.address}:{OUTSIDE_PORT}/"
        eventually(lambda: in_task(lab, left, ["timeout", "2", "wget", "-qO", "/dev/null", url]).returncode == 0,
                   timeout=20, what="a task on a normal overlay to reach the outside")
        assert in_task(lab, inner, ["timeout", "2", "wget", "-qO", "/dev/null", url]).returncode in (1, 143)
        assert "default" not in in_task(lab, inner, ["ip", "route"]).stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_network_rm_in_use_and_an_exhausted_pool_say_why(lab: Lab) -> None:
    used = network(lab, "busy")
    service(lab, "b", SLEEPER, 1, ["busy"])
    converged(lab, "b", 1)
    err = api_error(lab, MANAGER, "DELETE", "/networks/busy")
    assert err.status == 400 and f"network {used} is in use by" in err.message
    network(lab, "tiny", IPAM={"Config": [{"Subnet": "10.99.0.0/29"}]})
    service(lab, "many", SLEEPER, 8, ["tiny"])

    def stuck() -> list[dict[str, Any]]:
        tasks = api(lab, MANAGER, "GET", "/tasks", filters={"service": ["many"]})
        return [t for t in tasks if 'network "tiny" (10.99.0.0/29)' in t["Status"].get("Err", "")]

    assert eventually(stuck, timeout=30, what="tasks waiting for an address on tiny to say why")
    ps = lab.exec(MANAGER, ["shoal", "service", "ps", "--no-trunc", "many"]).stdout
    assert 'network "tiny" (10.99.0.0/29)' in ps
    for name in ("many", "b"):
        api(lab, MANAGER, "DELETE", f"/services/{name}")


def test_a_killed_worker_daemon_keeps_its_tasks_connected_and_peers_converge(lab: Lab) -> None:
    app = network(lab, "kept")
    service(lab, "kw", WEB, 5, ["kept"], max_per_node=1)   # one task on every host
    tasks = converged(lab, "kw", 5)
    on_worker = [t for t in tasks if host_of(lab, t) == "worker-1"]
    elsewhere = [t for t in tasks if host_of(lab, t) != "worker-1"]
    assert on_worker and elsewhere
    probe, target = elsewhere[0], on_worker[0]
    url = f"http://{address(target, app)}/"
    assert in_task(lab, probe, ["wget", "-qO-", url]).stdout.strip() == target["ID"][:12]
    # A restart within the grace keeps the node's tasks: with 1 s heartbeats that grace is 3 s,
    # which a loaded machine's daemon start can exceed; 10 s heartbeats leave the 10 s of a
    # closed connection.
    set_heartbeat(lab, MANAGER, 10)
    try:
        lab.kill("worker-1")
        # the data path lives in the kernel: traffic keeps flowing while the daemon is gone
        assert in_task(lab, probe, ["timeout", "3", "wget", "-qO-", url]).stdout.strip() == target["ID"][:12]
        lab.start("worker-1")
        eventually(lambda: {n["Description"]["Hostname"]: n["Status"]["State"]
                            for n in api(lab, MANAGER, "GET", "/nodes")}["worker-1"] == "ready",
                   timeout=30, what="the restarted worker to be ready")
    finally:
        set_heartbeat(lab, MANAGER, 1)
    after = {t["ID"]: t for t in running(lab, "kw")}
    assert target["ID"] in after, "the task was not replaced"
    assert address(after[target["ID"]], app) == address(target, app)
    assert in_task(lab, probe, ["wget", "-qO-", url]).stdout.strip() == target["ID"][:12]
    # and its DNS works again: the restarted daemon serves the sandbox's resolver
    eventually(lambda: lookup(lab, target, "tasks.kw") == {address(t, app) for t in running(lab, "kw")},
               timeout=10, what="the restarted worker's tasks to resolve names again")
    # partition the worker from one manager and heal: traffic between the other hosts is not cut
    bystander = next((t for t in elsewhere if host_of(lab, t) != "manager-2"), None)
    lab.partition("worker-1", "manager-2")
    try:
        if bystander is not None:
            reply = in_task(lab, bystander, ["timeout", "3", "wget", "-qO-", url]).stdout.strip()
            assert reply == target["ID"][:12]
    finally:
        lab.heal()
    eventually(lambda: in_task(lab, probe, ["timeout", "2", "wget", "-qO-", url]).stdout.strip() == target["ID"][:12],
               timeout=20, what="traffic after the heal")
