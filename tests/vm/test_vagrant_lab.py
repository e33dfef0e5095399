"""A swarm of real VMs (issue 16): Vagrant + libvirt, the box built from Debian packages, shoal
under systemd in each VM. Run only by `./deploy/test.sh --vm` (needs root; about 10 minutes here).

One test, in the order a person would check a new lab: the box is built (or reused), 1 manager and
2 workers come up and form a swarm (3 Ready nodes); a service publishes port 8080 through the
routing mesh and runs on every VM; the mesh answers on every VM; a task reaches the service by
name over an overlay network from another VM; a worker VM is destroyed (virsh destroy) and its
tasks move. `lab.sh down` then must leave no VM, libvirt network, daemon or namespace behind.
The wall time of each step and the host's peak memory go to the terminal summary.
"""

from __future__ import annotations

import json
import os
import re
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.vm.conftest import REPORT_KEY
from tests.vm.vmlab import BUILD_BOX, DOMAIN_PREFIX, LAB_SH, MemorySampler, VmLab, libvirt_leftovers, run, wait_for

IMAGE = "shoal/demo:latest"   # provision.sh loads it on every VM (busybox, built in the VM)
LOG_DIR = Path(os.environ.get("SHOAL_VM_TEST_LOGS", "/tmp/shoal-vm-test"))
# The page names the task's addresses, so an answer says which task (hence which VM) gave it.
WEB_ARGS = ["sh", "-c", "{ echo \"hello from $(hostname)\"; ip -4 -o addr; } > /tmp/index.html; "
                        "exec httpd -f -p 80 -h /tmp"]
# Bounded by busybox's `timeout`: busybox-static's `wget -T` crashes (SIGSEGV; see tests/swarm/helpers.py).
PROBE_ARGS = ["sh", "-c", "while true; do echo \"probe: $(timeout 3 wget -qO- http://web/)\"; sleep 1; done"]


def service_spec(name: str, args: list[str], replicas: int, **extra: Any) -> dict[str, Any]:
    template: dict[str, Any] = {"ContainerSpec": {"Image": IMAGE, "Args": args},
                                "Networks": [{"Target": "app"}]}
    if "constraints" in extra:
        template["Placement"] = {"Constraints": extra.pop("constraints")}
    return {"Name": name, "TaskTemplate": template, "Mode": {"Replicated": {"Replicas": replicas}}, **extra}


def running_tasks(lab: VmLab, service: str) -> list[dict[str, Any]]:
    tasks = lab.api("manager-1", "GET", "/tasks",
                    filters={"service": [service], "desired-state": ["running"]})
    return [t for t in tasks if t["Status"]["State"] == "running"]


def task_addresses(task: dict[str, Any]) -> set[str]:
    return {a.split("/")[0] for att in task.get("NetworksAttachments") or [] for a in att.get("Addresses") or []}


def fetch(lab: VmLab, address: str, port: int) -> str:
    out = lab.host(["curl", "-sS", "--max-time", "5", f"http://{address}:{port}/"], check=False)
    return out.stdout.decode(errors="replace") if out.returncode == 0 else ""


def test_vagrant_lab(request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    report: list[str] = request.config.stash[REPORT_KEY]
    timings: dict[str, float] = {}
    memory = MemorySampler()
    memory.start()
    start = time.monotonic()
    mark = start

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings[name] = round(now - mark, 1)
        mark = now

    lab: VmLab | None = None
    leftovers: list[str] = []
    try:
        built = run([str(BUILD_BOX)], timeout=900)
        (LOG_DIR / "build-box.log").write_bytes(built.stderr)
        box_state = "built" if b"built " in built.stderr else "reused"
        lap(f"box ({box_state})")

        env = {**os.environ, "SHOAL_MANAGERS": "1", "SHOAL_WORKERS": "2"}
        with open(LOG_DIR / "lab-up.log", "wb") as log:
            up = run([str(LAB_SH), "up"], timeout=900, env=env, check=False)
            log.write(up.stdout + up.stderr)
        assert up.returncode == 0, f"lab.sh up failed (log: {LOG_DIR / 'lab-up.log'}):\n{up.stderr.decode()[-3000:]}"
        lap("lab up (libvirt, 3 VMs, provisioning, swarm)")
        lab = VmLab()

        def nodes_ready() -> list[dict[str, Any]] | None:
            assert lab is not None
            nodes = lab.api("manager-1", "GET", "/nodes")
            ready = [n for n in nodes if n["Status"]["State"] == "ready"]
            return nodes if len(ready) == 3 and len(nodes) == 3 else None

        nodes = wait_for("3 Ready nodes", nodes_ready, timeout=120)
        hostname = {n["ID"]: n["Description"]["Hostname"] for n in nodes}
        address = {n["Description"]["Hostname"]: n["Status"]["Addr"] for n in nodes}
        assert sorted(hostname.values()) == ["manager-1", "worker-1", "worker-2"]
        node_ls = lab.ssh("manager-1", "sudo shoal node ls").stdout.decode()
        assert node_ls.count("Ready") == 3, node_ls
        lap("3 nodes Ready")

        lab.api("manager-1", "POST", "/networks/create", {"Name": "app", "Driver": "overlay", "Attachable": True})
        lab.api("manager-1", "POST", "/services/create", service_spec(
            "web", WEB_ARGS, 3,
            EndpointSpec={"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}]}))
        def spread() -> list[dict[str, Any]] | None:
            assert lab is not None
            tasks = running_tasks(lab, "web")
            return tasks if len({t["NodeID"] for t in tasks}) == 3 else None

        web = wait_for("web: 3 tasks running on 3 VMs", spread, timeout=240)
        lap("service across the 3 VMs")

        for name, addr in sorted(address.items()):
            body = wait_for(f"the routing mesh on {name} ({addr}:8080)", partial(fetch, lab, addr, 8080),
                            timeout=60)
            assert "hello from" in body
        lap("published port answers on every VM")

        # A task on manager-1 reaches `web` by name (embedded DNS, VIP) over the overlay, and
        # answers come from tasks on the other VMs.
        lab.api("manager-1", "POST", "/services/create",
                service_spec("probe", PROBE_ARGS, 1, constraints=["node.role==manager"]))
        task_node = {a: hostname[t["NodeID"]] for t in web for a in task_addresses(t)}

        def remote_answers() -> set[str] | None:
            assert lab is not None
            logs = lab.api("manager-1", "GET", "/services/probe/logs", stdout="1", stderr="1", tail="all")
            seen = {task_node[a] for a in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", str(logs)) if a in task_node}
            remote = seen - {"manager-1"}
            return remote or None

        remote = wait_for("probe on manager-1 reaching web by name on another VM", remote_answers, timeout=180)
        lap("service by name across VMs (overlay)")

        # Destroy a worker VM that runs a web task; its task moves to the VMs left.
        victim = "worker-2"
        victim_id = next(i for i, h in hostname.items() if h == victim)
        run(["virsh", "-c", "qemu:///system", "destroy", f"{DOMAIN_PREFIX}{victim}"])

        def moved() -> list[dict[str, Any]] | None:
            assert lab is not None
            nodes = {n["ID"]: n["Status"]["State"] for n in lab.api("manager-1", "GET", "/nodes")}
            tasks = running_tasks(lab, "web")
            if nodes[victim_id] == "down" and len(tasks) == 3 and all(t["NodeID"] != victim_id for t in tasks):
                return tasks
            return None

        after = wait_for(f"{victim} down and its web task moved", moved, timeout=180)
        lap(f"virsh destroy {victim}: task moved")
        for name in ("manager-1", "worker-1"):
            assert "hello from" in wait_for(f"the mesh on {name} after the failover",
                                            partial(fetch, lab, address[name], 8080), timeout=60)
        lap("mesh answers after the failover")
        report.append(f"web tasks after the failover: {sorted(hostname[t['NodeID']] for t in after)}; "
                      f"probe on manager-1 got answers from {sorted(remote)}")
    finally:
        if lab is not None:
            lab.close()
        mark = time.monotonic()
        down = run([str(LAB_SH), "down"], timeout=300, check=False)
        (LOG_DIR / "lab-down.log").write_bytes(down.stdout + down.stderr)
        lap("lab down")
        memory.stop()
        leftovers = libvirt_leftovers()
        total = round(time.monotonic() - start, 1)
        summary = {"wall_seconds": total, "steps_seconds": timings,
                   "host_memory_mb": {"baseline": round(memory.baseline_mb), "peak": round(memory.peak_mb),
                                      "peak_over_baseline": round(memory.peak_mb - memory.baseline_mb)},
                   "qemu_rss_peak_mb": round(memory.peak_qemu_mb), "leftovers": leftovers}
        (LOG_DIR / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
        report.append(f"wall time {total} s; steps (s): {json.dumps(timings)}")
        report.append(f"host memory in use: {summary['host_memory_mb']} MB; peak qemu RSS (all VMs) "
                      f"{summary['qemu_rss_peak_mb']} MB")
        report.append(f"full report: {LOG_DIR / 'report.json'}")
    assert not leftovers, f"lab.sh down left: {leftovers}"
