"""The local lab: hosts as namespaces on a private bridge, each with a real daemon."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cli.lab import Lab
from cli.lab import net as labnet
from tests.conftest import needs_root


def _root_routes() -> str:
    return subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                          text=True).stdout


def _can_ping(lab: Lab, frm: str, to: str) -> bool:
    proc = lab.exec(frm, ["busybox", "ping", "-c", "1", "-W", "1", lab.node(to).address])
    return proc.returncode == 0


def _stat(pid: int) -> str:
    """The process's state letter ("" once it is gone; "Z" for a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _executor_ids(lab: Lab) -> list[str]:
    """The executor IDs of the lab's hosts: their containers' cgroups are /shoal/<id>/..."""
    return [p.read_text().strip() for p in lab.data_root.glob("*/executor-id")]


def _leftovers(lab: Lab, pids: list[int], executors: Sequence[str] = ()) -> list[str]:
    found = [f"namespace {ns}" for ns in labnet.list_namespaces() if ns.startswith(lab.name + "-")]
    found += [f"process {pid} ({_stat(pid)})" for pid in pids if _stat(pid) not in ("", "Z")]
    found += [f"dir {p}" for p in (lab.run_dir, lab.data_root) if p.exists()]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount under {p}" for p in (lab.run_dir, lab.data_root) if str(p) in mounts]
    found += [f"cgroup {d}" for d in (Path("/sys/fs/cgroup/pids/shoal") / e for e in executors) if d.exists()]
    return found


def test_lab_up_runs_a_daemon_per_host_without_touching_root_routes(make_lab) -> None:
    routes_before = _root_routes()
    lab = make_lab(managers=2, workers=1)
    assert sorted(lab.nodes) == ["manager-1", "manager-2", "worker-1"]
    benchmarking = ipaddress.ip_network("198.18.0.0/15")
    for name, node in lab.nodes.items():
        assert ipaddress.ip_address(node.address) in benchmarking
        assert node.ns in labnet.list_namespaces()
        out = lab.exec(name, [sys.executable, "-m", "cli.main", "info"], check=True).stdout
        assert f"Name: {name}" in out
        # SHOAL_HOST and DOCKER_HOST point at this host's own daemon.
        env = lab.exec(name, ["env"], check=True).stdout
        assert f"SHOAL_HOST=unix://{node.socket}" in env
        assert f"DOCKER_HOST=unix://{node.socket}" in env
    assert _can_ping(lab, "manager-1", "worker-1")
    assert _root_routes() == routes_before


def test_partition_blocks_traffic_and_heal_restores_it(make_lab) -> None:
    lab = make_lab(managers=2, workers=1)
    assert _can_ping(lab, "manager-1", "worker-1")
    lab.partition("manager-1", "worker-1")
    assert not _can_ping(lab, "manager-1", "worker-1")
    assert not _can_ping(lab, "worker-1", "manager-1")
    assert _can_ping(lab, "manager-1", "manager-2"), "only the named pair is cut"
    assert _can_ping(lab, "manager-2", "worker-1")
    lab.heal()
    assert _can_ping(lab, "manager-1", "worker-1")
    assert _can_ping(lab, "worker-1", "manager-1")


def test_kill_and_restart_a_node(make_lab) -> None:
    lab = make_lab(managers=1, workers=1)
    old_pid = lab.node("worker-1").pid
    lab.kill("worker-1")
    assert lab.status("worker-1") == "stopped"
    lab.start("worker-1")
    assert lab.status("worker-1") == "running"
    assert lab.node("worker-1").pid != old_pid
    lab.restart("manager-1")
    assert lab.status("manager-1") == "running"


def _container_pids(executors: Sequence[str]) -> list[int]:
    """Processes in these executors' cgroups (containers and their shims); other labs' executors
    on the same machine are not this test's business."""
    return [int(p) for executor in executors
            for procs in Path("/sys/fs/cgroup/pids").glob(f"shoal/{executor}/**/cgroup.procs")
            for p in procs.read_text().split()]


def test_down_leaves_nothing_even_after_kill_9(make_lab) -> None:
    lab = make_lab(managers=1, workers=2, swarm=True)
    import asyncio

    from cli.lab import demo

    archive = demo.build_demo_archive(lab.run_dir).read_bytes()
    for node in lab.nodes.values():
        asyncio.run(demo.load_image(node.host, archive))
    assert asyncio.run(demo.deploy_demo(lab.node("manager-1").host, replicas=3)) == 3
    executors = _executor_ids(lab)
    assert executors
    containers = _container_pids(executors)
    assert containers, "the demo's containers run in the executors' cgroups"
    pids = [n.pid for n in lab.nodes.values()] + containers
    lab.kill("worker-1")
    # A crash of the tool itself: the state file is lost too.
    (lab.run_dir / "state.json").unlink()
    fresh = Lab(lab.name)
    fresh.down()
    assert _leftovers(lab, pids, executors) == []
    fresh.down()  # idempotent
    assert _leftovers(lab, pids, executors) == []


def test_lab_cli_up_ls_exec_down(tmp_path: Path) -> None:
    needs_root()
    name = f"c{os.getpid() % 100000:05d}"
    shoal = [sys.executable, "-m", "cli.main", "lab"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*shoal, *args], capture_output=True, text=True, timeout=120)

    try:
        up = run("up", "--name", name, "--managers", "2", "--workers", "1")
        assert up.returncode == 0, up.stderr
        # The demo (2 replicas on 3 hosts) answered through the routing mesh of the host without a task.
        assert "which runs none of its tasks) answered: hello from " in up.stdout, up.stdout
        ls = run("ls", "--name", name)
        assert "manager-1" in ls.stdout and "worker-1" in ls.stdout and "running" in ls.stdout
        ex = run("exec", "--name", name, "worker-1", "--", sys.executable, "-m", "cli.main", "info")
        assert ex.returncode == 0 and "Name: worker-1" in ex.stdout, ex.stderr
        # `lab up` formed the swarm by itself and runs the demo service.
        nodes = run("exec", "--name", name, "manager-1", "--", sys.executable, "-m", "cli.main", "node", "ls")
        assert nodes.returncode == 0, nodes.stderr
        assert "Leader" in nodes.stdout and "worker-1" in nodes.stdout and nodes.stdout.count("Ready") == 3
        ps = run("exec", "--name", name, "manager-1", "--", sys.executable, "-m", "cli.main", "service", "ls")
        assert "demo" in ps.stdout and "2/2" in ps.stdout, ps.stdout
        bad = run("exec", "--name", name, "nope", "--", "true")
        assert bad.returncode == 1 and "no node 'nope'" in bad.stderr and "Traceback" not in bad.stderr
        again = run("up", "--name", name)
        assert again.returncode == 1 and "already up" in again.stderr
    finally:
        assert run("down", "--name", name).returncode == 0
        assert run("down", "--name", name).returncode == 0
    assert not [ns for ns in labnet.list_namespaces() if ns.startswith(name + "-")]
