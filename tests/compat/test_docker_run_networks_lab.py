"""`docker run` on the worker of a lab swarm (1 manager + 1 worker) with the real docker CLI, on the
networks dockerd gives it (issue 13):
- `--network <attachable overlay>`: the container reaches, by name and by VIP, a service whose
  task runs on the other host (and, on the manager, beside it); `docker network inspect` on the
  worker lists it while it runs; a service task resolves the container by name (attachable
  containers are in the embedded DNS); a restart of the worker's daemon keeps all of it (live
  restore); `docker network connect` of it to a container on the default bridge works beside the
  bridge, and `disconnect` undoes it;
  a non-attachable overlay is refused with Docker's text; once the container is gone its
  attachment task is gone from the cluster and its address is free again (a /29 overlay, whose 4
  free addresses would be spent otherwise, serves 5 containers one after the other);
- no `--network`: the predefined `bridge` network (`shoal0`, not docker0): an address from its
  subnet, the host's resolv.conf, and outbound NAT to a server in a namespace this test creates
  beside the worker (the server sees the worker's address, never the container's); `docker
  network rm bridge` is refused with Docker's text.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

import pytest

from cli.lab import Lab
from tests.compat.test_docker_cli_node_containers import docker
from tests.swarm.helpers import api, eventually

WORKER, MANAGER = "worker-1", "manager-1"
SERVER = ("sh", "-c", "echo served-by-$(hostname) > /tmp/index.html; exec httpd -f -p 80 -h /tmp")


def attachment_tasks(lab: Lab) -> list[dict[str, Any]]:
    found = api(lab, MANAGER, "GET", "/tasks", filters=json.dumps({"runtime": ["attachment"]}))
    assert isinstance(found, list)
    return found


def test_docker_run_networks_on_a_lab_worker(docker_lab: Lab, server_ns: str) -> None:
    """One lab for both (a lab costs seconds): the default bridge, then an attachable overlay."""
    on_the_default_bridge(docker_lab, server_ns)
    on_an_attachable_overlay(docker_lab)


def on_an_attachable_overlay(lab: Lab) -> None:
    docker(lab, MANAGER, "network", "create", "-d", "overlay", "--attachable", "--subnet", "10.61.0.0/24", "ov")
    docker(lab, MANAGER, "network", "create", "-d", "overlay", "closed")
    docker(lab, MANAGER, "service", "create", "--detach", "--name", "web", "--network", "ov",
           "--constraint", "node.role==manager", "busybox", *SERVER)
    vip = eventually(lambda: next((v["Addr"].split("/")[0] for v in json.loads(
        docker(lab, MANAGER, "service", "inspect", "web"))[0]["Endpoint"].get("VirtualIPs") or []), None),
        timeout=30, what="the service's VIP")
    eventually(lambda: "Running" in docker(lab, MANAGER, "service", "ps", "--format", "{{.CurrentState}}", "web")
               or None, timeout=60, what="web running")

    probe = (f"timeout 5 wget -qO- http://web/ && timeout 5 wget -qO- http://{vip}/ && "
             "ip -4 addr show eth0 | grep -o 'inet [0-9./]*' && grep nameserver /etc/resolv.conf")
    out = docker(lab, WORKER, "run", "--rm", "--network", "ov", "busybox", "sh", "-c", probe, timeout=60)
    lines = out.splitlines()
    assert lines[0].startswith("served-by-") and lines[1] == lines[0], out
    assert IPv4Interface(lines[2].split()[1]).ip in IPv4Network("10.61.0.0/24") and lines[3] == "nameserver 127.0.0.11"
    eventually(lambda: attachment_tasks(lab) == [] or None, timeout=15, what="the attachment task removed")
    out = docker(lab, MANAGER, "run", "--rm", "--network", "ov", "busybox", "sh", "-c",   # beside the task
                 "timeout 5 wget -qO- http://web/", timeout=60)
    assert out.startswith("served-by-"), out

    # While it runs: listed by the worker's network inspect, resolvable by the service's task.
    cid = docker(lab, WORKER, "run", "-d", "--name", "visitor", "--network", "ov", "busybox", "sleep", "1000").strip()
    net = json.loads(docker(lab, WORKER, "network", "inspect", "ov"))[0]
    assert net["Containers"][cid]["Name"] == "visitor", net["Containers"]
    address = net["Containers"][cid]["IPv4Address"].split("/")[0]
    inspected = json.loads(docker(lab, WORKER, "inspect", "visitor"))[0]
    assert inspected["NetworkSettings"]["Networks"]["ov"]["IPAddress"] == address
    [task] = attachment_tasks(lab)
    assert task["Spec"]["NetworkAttachmentSpec"]["ContainerID"] == cid and task["Status"]["State"] == "running"
    assert docker(lab, MANAGER, "node", "ps", "--format", "{{.Name}}", WORKER).strip() == ""
    task_id = docker(lab, MANAGER, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=web").split()[0]
    looked_up = eventually(lambda: _lookup(lab, task_id), timeout=15, what="the container's name in DNS")
    assert looked_up is not None and address in looked_up
    lab.restart(WORKER)         # live restore: the attachment, its interface and its DNS stay
    after = eventually(lambda: lab.exec(WORKER, ["docker", "exec", "visitor", "sh", "-c",
                                                 "timeout 5 wget -qO- http://web/"], timeout=30).stdout or None,
                       timeout=30, what="the service reached by name after the worker's restart")
    assert after is not None and after.startswith("served-by-")
    assert [t["ID"] for t in attachment_tasks(lab)] == [task["ID"]]
    docker(lab, WORKER, "rm", "-f", "visitor")
    eventually(lambda: attachment_tasks(lab) == [] or None, timeout=15, what="the attachment task removed")

    # Connected later, beside the default bridge: both work, the default route stays the bridge's.
    docker(lab, WORKER, "run", "-d", "--name", "loner", "busybox", "sleep", "1000")
    docker(lab, WORKER, "network", "connect", "ov", "loner")
    out = docker(lab, WORKER, "exec", "loner", "sh", "-c", "timeout 5 wget -qO- http://web/ && "
                 "ping -c 1 -W 5 $(ip route | awk '/default/ {print $3}') >/dev/null && echo bridge-ok")
    assert out.splitlines()[0].startswith("served-by-") and out.splitlines()[1] == "bridge-ok", out
    docker(lab, WORKER, "network", "disconnect", "ov", "loner")
    assert "ov" not in json.loads(docker(lab, WORKER, "inspect", "loner"))[0]["NetworkSettings"]["Networks"]
    docker(lab, WORKER, "rm", "-f", "loner")
    eventually(lambda: attachment_tasks(lab) == [] or None, timeout=15, what="the attachment task removed")

    # Not attachable: Docker's text.
    err = docker(lab, WORKER, "run", "--rm", "--network", "closed", "busybox", "true", ok=False)
    assert "Could not attach to network closed: rpc error: code = PermissionDenied desc = network closed " \
           "not manually attachable" in err, err

    # Addresses come back: a /29 has 5 hosts besides its gateway, one of them the node's own endpoint
    # (that leaves 4): the 5th container gets an address only if an earlier one's was freed.
    docker(lab, MANAGER, "network", "create", "-d", "overlay", "--attachable", "--subnet", "10.62.0.0/29", "tiny")
    seen = set()
    for _ in range(5):
        seen.add(docker(lab, WORKER, "run", "--rm", "--network", "tiny", "busybox", "sh", "-c",
                        "ip -4 addr show eth0 | grep -o 'inet [0-9.]*'", timeout=60).split()[1])
    assert len(seen) >= 2 and all(IPv4Network("10.62.0.0/29").overlaps(IPv4Network(a)) for a in seen)
    eventually(lambda: attachment_tasks(lab) == [] or None, timeout=15, what="the attachment tasks removed")
    docker(lab, MANAGER, "service", "rm", "web")


def _lookup(lab: Lab, task_id: str) -> str | None:
    proc = lab.exec(MANAGER, ["docker", "exec", task_id, "nslookup", "visitor"], timeout=30)
    return proc.stdout if proc.returncode == 0 and "Address" in proc.stdout.split("visitor", 1)[-1] else None


@pytest.fixture
def server_ns(docker_lab: Lab) -> Iterator[str]:
    """A namespace beside the worker: a veth from the worker's namespace (10.213.0.1/30) to it
    (10.213.0.2/30), nothing else; removed at the end."""
    name = f"t13srv{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        docker_lab.exec(WORKER, ["ip", "link", "add", "t13a", "type", "veth", "peer", "name", "t13b", "netns", name],
                        check=True)
        docker_lab.exec(WORKER, ["ip", "addr", "add", "10.213.0.1/30", "dev", "t13a"], check=True)
        docker_lab.exec(WORKER, ["ip", "link", "set", "t13a", "up"], check=True)
        for argv in (["ip", "addr", "add", "10.213.0.2/30", "dev", "t13b"], ["ip", "link", "set", "t13b", "up"],
                     ["ip", "link", "set", "lo", "up"]):
            subprocess.run(["ip", "netns", "exec", name, *argv], check=True)
        yield name
    finally:
        docker_lab.exec(WORKER, ["ip", "link", "del", "t13a"])
        subprocess.run(["ip", "netns", "del", name], check=False)


ANSWER_ONCE = """
import socket
s = socket.socket()
s.bind(("10.213.0.2", 8000))
s.listen()
print("ready", flush=True)
c, peer = s.accept()
c.recv(4096)
c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nfrom " + peer[0].encode() + b"\\n")
c.close()
"""


def on_the_default_bridge(lab: Lab, server_ns: str) -> None:
    bridge = json.loads(docker(lab, WORKER, "network", "inspect", "bridge"))[0]
    assert (bridge["Driver"], bridge["Scope"]) == ("bridge", "local")
    assert bridge["Options"]["com.docker.network.bridge.default_bridge"] == "true"
    assert bridge["Options"]["com.docker.network.bridge.name"] == "shoal0"
    subnet = IPv4Network(bridge["IPAM"]["Config"][0]["Subnet"])
    assert subnet != IPv4Network("172.17.0.0/16")
    assert "bridge bridge local" in docker(lab, MANAGER, "network", "ls", "--format",
                                           "{{.Name}} {{.Driver}} {{.Scope}}").splitlines()

    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "python3", "-c", ANSWER_ONCE],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = docker(lab, WORKER, "run", "--rm", "busybox", "sh", "-c",
                     "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; grep -c 127.0.0.11 /etc/resolv.conf; "
                     "timeout 5 wget -qO- http://10.213.0.2:8000/", timeout=60)
    finally:
        server.kill()
        server.wait()
    lines = out.splitlines()
    assert IPv4Interface(lines[0].split()[1]).ip in subnet, out
    assert lines[1] == "0" and lines[2] == "from 10.213.0.1", out       # the host's resolv.conf; NATed

    err = docker(lab, WORKER, "network", "rm", "bridge", ok=False)
    assert "bridge is a pre-defined network and cannot be removed" in err
