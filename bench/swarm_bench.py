"""Benchmark: service lifecycle on a shoal lab side by side with Docker swarm mode, in one run.

Prints one JSON document. The same Engine API client (cli.client.DaemonClient over a unix socket)
drives both systems through the same requests:
  - shoal: a lab (cli.lab.Lab: 1 manager + W workers, each a network namespace running a real
    `shoal daemon`), driven through the manager's unix socket;
  - docker: dockerd from Debian's docker.io (deploy/bench-docker.sh installs it), started by this
    bench as a one-node swarm in a network namespace of its own, with its own data root, exec root,
    unix socket, pid file and cgroup parent, no iptables, no bridge, no masquerading; stopped by PID.
Both get the same busybox image, built in-process and loaded from a docker-save archive
(`POST /images/load`; on every lab host for shoal).
Workload per size N: a replicated service of N tasks running `sh -c "trap 'exit 0' TERM; sleep
100000 & wait"`. Timed phases: create N → all running; scale to 3N → all running; rolling update
of all 3N (an env change, parallelism N) → all running the new spec (and, separately, until the
service's UpdateStatus is completed, which includes the monitor window); remove → no task alive.
The systems run one after the other (never at once). Every figure of both is in the JSON, with the
ratios shoal/docker (target: each workload figure ≤ 0.5; update_completed is reported for
information: it adds the same Monitor window to both).
Usage: python bench/swarm_bench.py [--sizes 10,30] [--systems shoal,docker] [--workers 2]
                                   [--update-monitor SECONDS] [--phase-timeout 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cli.client import DaemonClient
from cli.lab.procs import all_pids, cmdline, ping, terminate, wait_gone
from worker.executor.rootfs import unmount_below
from worker.executor.teardown import remove_cgroup_tree
from worker.images.busybox_image import build_busybox_image, write_docker_save

IMAGE = "shoal-bench/busybox:latest"
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
GEN_VAR = "BENCH_GEN"
LIVE_STATES = {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}
DOCKERD = "/usr/sbin/dockerd"
POLL_S = 0.1
PHASES = ("create", "scale", "update", "update_completed", "remove")
TARGET_PHASES = ("create", "scale", "update", "remove")    # the workload figures
TARGET_RATIO = 0.5


class BenchError(Exception):
    pass


# -- the workload, identical for both systems ------------------------------------------------------

def service_spec(name: str, replicas: int, gen: int, parallelism: int, monitor_s: float | None) -> dict[str, Any]:
    update: dict[str, Any] = {"Parallelism": parallelism, "Delay": 0, "FailureAction": "pause",
                              "Order": "stop-first"}
    if monitor_s is not None:
        update["Monitor"] = int(monitor_s * 1e9)
    return {
        "Name": name,
        "Labels": {"org.shoal.bench": "swarm"},
        "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": COMMAND, "Env": [f"{GEN_VAR}={gen}"]}},
        "Mode": {"Replicated": {"Replicas": replicas}},
        "UpdateConfig": update,
    }


def _gen_of(task: dict[str, Any]) -> int:
    for item in ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Env") or []:
        if item.startswith(GEN_VAR + "="):
            return int(item.split("=", 1)[1])
    return 0


async def _service_tasks(client: DaemonClient, service_id: str) -> list[dict[str, Any]]:
    # All tasks, filtered here: a removed service's name or ID no longer resolves as a filter.
    tasks = await client.get("/tasks")
    return [t for t in tasks or [] if t.get("ServiceID") == service_id]


async def _wait(what: str, timeout: float, probe: Callable[[], Any]) -> float:
    """Poll `probe` (async, returns (done, progress text)) until done; seconds taken."""
    start = time.monotonic()
    deadline = start + timeout
    progress = ""
    while time.monotonic() < deadline:
        done, progress = await probe()
        if done:
            return time.monotonic() - start
        await asyncio.sleep(POLL_S)
    raise BenchError(f"{what}: not done after {timeout:.0f}s ({progress})")


def _running(tasks: list[dict[str, Any]], gen: int) -> int:
    return sum(1 for t in tasks if t.get("DesiredState") == "running" and t["Status"]["State"] == "running"
               and _gen_of(t) == gen)


async def _update(client: DaemonClient, service_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    current = await client.get(f"/services/{service_id}")
    spec = current["Spec"]
    change(spec)
    await client.post(f"/services/{service_id}/update", spec, version=current["Version"]["Index"])


async def run_workload(host: str, n: int, monitor_s: float | None, timeout: float) -> dict[str, Any]:
    """One pass of the workload at size `n`; seconds per phase (a phase that fails is reported as
    an error and the service is still removed)."""
    name = f"bench-{n}-{os.getpid()}"
    out: dict[str, Any] = {"replicas": n, "scaled_to": 3 * n}
    async with DaemonClient(host, timeout=30) as client:
        service_id = ""
        try:
            async def all_running(want: int, gen: int) -> tuple[bool, str]:
                tasks = await _service_tasks(client, service_id)
                running = _running(tasks, gen)
                return running == want and sum(t["Status"]["State"] == "running" for t in tasks) == want, \
                    f"{running}/{want} running gen {gen}"

            t0 = time.monotonic()
            created = await client.post("/services/create", service_spec(name, n, 1, n, monitor_s))
            service_id = created["ID"]
            await _wait("create", timeout, lambda: all_running(n, 1))
            out["create_s"] = round(time.monotonic() - t0, 3)

            t0 = time.monotonic()
            await _update(client, service_id, lambda s: s["Mode"]["Replicated"].update(Replicas=3 * n))
            await _wait("scale", timeout, lambda: all_running(3 * n, 1))
            out["scale_s"] = round(time.monotonic() - t0, 3)

            def bump(spec: dict[str, Any]) -> None:
                spec["TaskTemplate"]["ContainerSpec"]["Env"] = [f"{GEN_VAR}=2"]

            async def update_completed() -> tuple[bool, str]:
                status = (await client.get(f"/services/{service_id}")).get("UpdateStatus") or {}
                return status.get("State") == "completed", f"UpdateStatus {status.get('State')!r}"

            t0 = time.monotonic()
            await _update(client, service_id, bump)
            await _wait("update", timeout, lambda: all_running(3 * n, 2))
            out["update_s"] = round(time.monotonic() - t0, 3)
            await _wait("update_completed", timeout, update_completed)
            out["update_completed_s"] = round(time.monotonic() - t0, 3)
        except Exception as e:  # a failed phase is a result, not a crash of the whole bench
            out["error"] = f"{type(e).__name__}: {e}"
        finally:
            if service_id:
                async def none_alive() -> tuple[bool, str]:
                    alive = [t for t in await _service_tasks(client, service_id)
                             if t["Status"]["State"] in LIVE_STATES]
                    return not alive, f"{len(alive)} tasks alive"

                t0 = time.monotonic()
                try:
                    await client.delete(f"/services/{service_id}")
                    await _wait("remove", timeout, none_alive)
                    out["remove_s"] = round(time.monotonic() - t0, 3)
                except Exception as e:
                    out.setdefault("error", f"{type(e).__name__}: {e}")
    return out


async def load_image(hosts: list[str], archive: bytes) -> None:
    async def one(host: str) -> None:
        async with DaemonClient(host, timeout=30) as c:
            await c.request("POST", "/images/load", data=archive, headers={"Content-Type": "application/x-tar"})
    await asyncio.gather(*(one(h) for h in hosts))


def run_sizes(host: str, sizes: list[int], monitor_s: float | None, timeout: float) -> dict[str, Any]:
    return {str(n): asyncio.run(run_workload(host, n, monitor_s, timeout)) for n in sizes}


# -- shoal: a lab ------------------------------------------------------------------------------------

def bench_shoal(archive: bytes, sizes: list[int], workers: int, monitor_s: float | None,
                timeout: float) -> dict[str, Any]:
    from cli.lab import Lab

    lab = Lab(f"sb{os.getpid() % 100000}")
    try:
        t0 = time.monotonic()
        lab.up(managers=1, workers=workers, swarm=True)
        up_s = time.monotonic() - t0
        asyncio.run(load_image([n.host for n in lab.nodes.values()], archive))
        runs = run_sizes(lab.node("manager-1").host, sizes, monitor_s, timeout)
        return {"hosts": 1 + workers, "lab_up_s": round(up_s, 3), "runs": runs}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        lab.down()


# -- docker: dockerd in a network namespace of its own ----------------------------------------------

class DockerSwarm:
    """One dockerd (and the containerd it spawns) owned by this bench. Everything it makes lives
    under `root` (data root, exec root, socket, pid file, log), in network namespace `netns` and
    below cgroup parent `cgroup`; `stop` removes all of it, whatever state the daemon is in."""

    def __init__(self) -> None:
        tag = f"shoalbench-docker-{os.getpid()}"
        self.root = Path(tempfile.mkdtemp(prefix="sbd-"))  # short: containerd socket paths are capped
        self.netns = tag
        self.cgroup = tag
        self.socket = self.root / "docker.sock"
        self.log = self.root / "dockerd.log"
        self.pid = 0
        self.containerd_pid = 0

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def start(self, timeout: float = 60.0) -> None:
        if not os.access(DOCKERD, os.X_OK):
            raise BenchError(f"{DOCKERD} is not installed (run deploy/bench-docker.sh)")
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True, capture_output=True)
        (self.root / "data").mkdir()
        (self.root / "exec").mkdir()
        cmd = ["nsenter", f"--net=/run/netns/{self.netns}", DOCKERD,
               "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
               "-H", self.host, "--pidfile", str(self.root / "dockerd.pid"),
               "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false",
               "--cgroup-parent", f"/{self.cgroup}", "--storage-driver", "overlay2"]
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.pid = proc.pid  # nsenter execs dockerd: the same PID
        deadline = time.monotonic() + timeout
        while not ping(self.socket):
            if proc.poll() is not None:
                raise BenchError(f"dockerd exited with {proc.returncode} during startup:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"dockerd not answering after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)
        with contextlib.suppress(OSError, ValueError):
            self.containerd_pid = int((self.root / "exec" / "containerd" / "containerd.pid").read_text())

    async def init_swarm(self, archive: bytes) -> dict[str, Any]:
        async with DaemonClient(self.host, timeout=30) as c:
            await c.post("/swarm/init", {"ListenAddr": "127.0.0.1:2377", "AdvertiseAddr": "127.0.0.1"})
            info = await c.get("/info")
        await load_image([self.host], archive)
        runtimes = info.get("Runtimes") or {}
        default = info.get("DefaultRuntime", "")
        return {"version": info.get("ServerVersion"), "default_runtime": default,
                "runtime_path": shutil.which((runtimes.get(default) or {}).get("path") or default) or "",
                "storage_driver": info.get("Driver"), "cgroup_driver": info.get("CgroupDriver")}

    def stop(self) -> None:
        root = str(self.root)
        terminate(self.pid, 30.0)
        if self.containerd_pid and root in cmdline(self.containerd_pid):
            terminate(self.containerd_pid, 10.0)
        # Whatever survived a crash: shims and helpers in our namespace or naming our root, and
        # container processes below our cgroup parent.
        for _ in range(3):
            pids = set(_netns_pids(self.netns)) | {p for p in all_pids() if root in cmdline(p)}
            pids |= set(_cgroup_pids(self.cgroup))
            pids.discard(os.getpid())
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in pids:
                wait_gone(pid, 5.0)
        unmount_below(Path(root))
        _remove_cgroups(self.cgroup)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def bench_docker(archive: bytes, sizes: list[int], monitor_s: float | None, timeout: float) -> dict[str, Any]:
    docker = DockerSwarm()
    try:
        t0 = time.monotonic()
        docker.start()
        engine = asyncio.run(docker.init_swarm(archive))
        up_s = time.monotonic() - t0
        runs = run_sizes(docker.host, sizes, monitor_s, timeout)
        return {"engine": engine, "daemon_up_s": round(up_s, 3), "runs": runs}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        docker.stop()


# -- process, mount and cgroup helpers ----------------------------------------------------------------

def _netns_pids(netns: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in proc.stdout.split() if p.isdigit()] if proc.returncode == 0 else []


def _cgroup_dirs(name: str) -> list[Path]:
    base = Path("/sys/fs/cgroup")
    return [d / name for d in base.iterdir() if (d / name).is_dir()] if base.is_dir() else []


def _cgroup_pids(name: str) -> list[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs(name):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def _remove_cgroups(name: str) -> None:
    for top in _cgroup_dirs(name):
        remove_cgroup_tree(top)


# -- main ---------------------------------------------------------------------------------------------

def ratios(shoal: dict[str, Any], docker: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size, s_run in (shoal.get("runs") or {}).items():
        d_run = (docker.get("runs") or {}).get(size) or {}
        out[size] = {p: round(s_run[f"{p}_s"] / d_run[f"{p}_s"], 3) for p in PHASES
                     if s_run.get(f"{p}_s") is not None and d_run.get(f"{p}_s")}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="10,30", help="comma-separated replica counts N (default 10,30)")
    ap.add_argument("--systems", default="shoal,docker", help="which of shoal,docker to run")
    ap.add_argument("--workers", type=int, default=2, help="lab workers besides the one manager")
    ap.add_argument("--update-monitor", type=float, default=None,
                    help="UpdateConfig.Monitor in seconds for both systems (default: each system's default)")
    ap.add_argument("--phase-timeout", type=float, default=300.0, help="seconds allowed per phase")
    args = ap.parse_args(argv)
    try:
        args.size_list = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        ap.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not args.size_list or min(args.size_list) < 1:
        ap.error("--sizes: every size must be >= 1")
    args.system_list = [s for s in args.systems.split(",") if s]
    unknown = set(args.system_list) - {"shoal", "docker"}
    if unknown:
        ap.error(f"--systems: unknown {sorted(unknown)} (choose from shoal, docker)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as tmp:
        image = build_busybox_image(Path(tmp), cmd=COMMAND, healthcheck={}, labels={"org.shoal.bench": "swarm"})
        archive = write_docker_save(image, Path(tmp) / "image.tar", [IMAGE]).read_bytes()
    result: dict[str, Any] = {
        "bench": "swarm",
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "workload": {"image": IMAGE, "command": COMMAND, "sizes": args.size_list,
                     "update": {"parallelism": "N", "order": "stop-first",
                                "monitor_s": args.update_monitor if args.update_monitor is not None
                                else "system default"},
                     "phases": {"create_s": "create N -> N running", "scale_s": "scale to 3N -> 3N running",
                                "update_s": "env change -> 3N running the new spec",
                                "update_completed_s": "env change -> UpdateStatus completed",
                                "remove_s": "delete -> no task alive"}},
        "target": "each workload figure (create, scale, update, remove) <= 0.5x docker's",
        "informational": {"update_completed": "update_s plus the Monitor window both systems wait after the "
                                              "last replacement runs (5 s by default): its ratio is "
                                              "(shoal update + 5) / (docker update + 5)"},
    }
    if "shoal" in args.system_list:
        result["shoal"] = bench_shoal(archive, args.size_list, args.workers, args.update_monitor,
                                      args.phase_timeout)
    if "docker" in args.system_list:
        result["docker"] = bench_docker(archive, args.size_list, args.update_monitor, args.phase_timeout)
    if "shoal" in result and "docker" in result:
        result["ratio_shoal_over_docker"] = ratios(result["shoal"], result["docker"])
        result["meets_target"] = all(
            ratio <= TARGET_RATIO for by_phase in result["ratio_shoal_over_docker"].values()
            for phase, ratio in by_phase.items() if phase in TARGET_PHASES) and all(
            set(TARGET_PHASES) <= set(by_phase) for by_phase in result["ratio_shoal_over_docker"].values())
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
