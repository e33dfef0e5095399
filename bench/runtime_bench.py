"""Benchmark: assignment → RUNNING on one worker, against bare `runc run -d` (the floor), in one run.

Prints one JSON document.
  - shoal: the agent's TaskRunner (worker.agent.task_runner) with a report callback that notes
    when each status arrives, over RuncTaskExecutor + Executor (overlay rootfs, OCI bundle, conmon
    shim, runc create, runc start) and an ImageStore holding the busybox image (loaded from a
    docker-save archive built in-process), all under a temporary data dir. A task is handed over
    in state ASSIGNED; the latency is until the runner reports RUNNING. The JSON also splits it:
    assigned→ready (image lookup, overlay mount, bundle, conmon + runc create) and ready→running
    (runc start, state).
  - runc: the same image layers copied into one plain rootfs dir, the same config.json (built by
    worker.executor.bundle from the same task config; read-only root, no /etc files, its own
    cgroup parent), and `runc --root <own> run -d` per container, timed until it returns (the
    container's process is then running).
Cases: one container at a time (`--iterations` runs; p50/p99), and `--burst` (50) started at once
(latency of each from the common start; p50/p99 and the time until the last), `--burst-rounds`
(3) times per system, alternated and with the first system swapped every round, latencies
pooled (one burst is a single draw of the machine's load; the rounds' p50s are listed too). Every container,
mount and cgroup made is removed before the bench exits. Target: shoal <= 1.5x bare runc.
Usage: python bench/runtime_bench.py [--iterations 20] [--burst 50] [--burst-rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import Task, TaskState, TaskStatus, new_id
from worker.agent.task_runner import TaskRunner
from worker.executor import Executor, rootfs
from worker.executor import bundle as oci_bundle
from worker.executor.spec import ResolvedUser
from worker.executor.task_executor import RuncTaskExecutor
from worker.executor.taskspec import config_from_task
from worker.executor.teardown import destroy_executor, remove_cgroup_tree
from worker.images.busybox_image import build_busybox_image, write_docker_save
from worker.images.store import ImageStore

IMAGE = "shoal-bench/busybox:latest"
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
RUNC = shutil.which("runc") or "/usr/sbin/runc"
TARGET_RATIO = 1.5
STEP_TIMEOUT = 60.0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def summary_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"n": len(values), "p50_ms": round(pct(values, 50) * 1e3, 2), "p99_ms": round(pct(values, 99) * 1e3, 2),
            "mean_ms": round(statistics.fmean(values) * 1e3, 2), "max_ms": round(max(values) * 1e3, 2)}


# -- shoal: TaskRunner over the real executor ---------------------------------------------------------

class ShoalWorker:
    def __init__(self, root: Path, archive: Path) -> None:
        self.root = root
        self.archive = archive
        self.data_dir = root / "data"
        self.executor: Executor | None = None
        self.tasks: RuncTaskExecutor | None = None

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True)
        images = ImageStore(self.root / "images")
        await images.load(self.archive)
        self.executor = Executor(self.data_dir)
        await self.executor.start_up()
        self.tasks = RuncTaskExecutor(self.executor, images, hostname="bench")

    async def run_tasks(self, count: int) -> tuple[list[float], dict[str, list[float]]]:
        """Start `count` tasks at once; each one's seconds from hand-over to RUNNING, plus the
        split (assigned→ready, ready→running). The tasks are then stopped and removed (untimed)."""
        assert self.tasks is not None
        spec = {"ContainerSpec": {"Image": IMAGE, "Args": COMMAND}}
        marks: dict[str, dict[TaskState, float]] = {}
        running = asyncio.Event()
        gone = asyncio.Event()
        finished: set[str] = set()
        runners = []
        for slot in range(1, count + 1):
            task = Task(id=new_id(), spec=spec, service_id="bench", service_name="bench", slot=slot,
                        node_id="bench-node", status=TaskStatus(TaskState.ASSIGNED, "", "assigned"))
            runners.append(TaskRunner(task, self.tasks, self._reporter(marks, count, running, gone, finished)))
            marks[task.id] = {}
        async with asyncio.TaskGroup() as group:
            start = time.monotonic()
            for runner in runners:
                group.create_task(runner.run())
            async with asyncio.timeout(STEP_TIMEOUT + count):
                await running.wait()
            for runner in runners:
                runner.unassign()
        failed = [m for m in marks.values() if TaskState.RUNNING not in m]
        if failed:
            errors = {r.status.err for r in runners if r.status.err}
            raise RuntimeError(f"{len(failed)} of {count} tasks never ran: {sorted(errors)[:3]}")
        latencies = [m[TaskState.RUNNING] - start for m in marks.values()]
        split = {"assigned_to_ready": [m[TaskState.READY] - start for m in marks.values()],
                 "ready_to_running": [m[TaskState.RUNNING] - m[TaskState.READY] for m in marks.values()]}
        return latencies, split

    @staticmethod
    def _reporter(marks: dict[str, dict[TaskState, float]], count: int, running: asyncio.Event,
                  gone: asyncio.Event, finished: set[str]) -> Any:
        def report(task_id: str, status: TaskStatus) -> None:
            marks[task_id].setdefault(status.state, time.monotonic())
            if status.state >= TaskState.RUNNING:
                finished.add(task_id)
                if len(finished) == count:
                    running.set()
        return report

    async def clean(self) -> None:
        """Whatever a failed run left: containers, shims, mounts, cgroups (and the helper that
        starts shims)."""
        if self.executor is None:
            return
        self.executor.close()
        await asyncio.to_thread(destroy_executor, self.data_dir)


# -- the floor: bare runc ---------------------------------------------------------------------------

class BareRunc:
    def __init__(self, root: Path, layers: list[Path], config_template: Any) -> None:
        self.root = root
        self.state_root = root / "runc-state"
        self.rootfs = root / "rootfs"
        self.layers = layers                   # top layer first
        self.template = config_template        # the ContainerConfig shoal built for the same task
        self.cgroup_parent = f"shoalbench-runc-{os.getpid()}"
        self.ids: list[str] = []

    def prepare(self) -> None:
        # All of it on a tmpfs, as runc's default --root (/run/runc) is on a normal host, and as
        # shoal's executor keeps runc state, bundles and records: the floor gets the same help.
        self.root.mkdir(parents=True)
        rootfs.mount("tmpfs", self.root, "tmpfs", 0, "mode=0700,size=512m")
        self.rootfs.mkdir(parents=True)
        for layer in reversed(self.layers):    # lowest first, upper layers overwrite
            subprocess.run(["cp", "-a", "--remove-destination", f"{layer}/.", str(self.rootfs)],
                           check=True, capture_output=True)

    def _bundle(self, cid: str) -> Path:
        path = self.root / "bundles" / cid
        path.mkdir(parents=True)
        spec = oci_bundle.build_spec(self.template, ResolvedUser(uid=0, gid=0, additional_gids=[], home="/root"),
                                     oci_bundle.HostPaths(
                                         rootfs=str(self.rootfs), cgroups_path=f"/{self.cgroup_parent}/{cid}",
                                         nofile_hard=resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        spec["root"]["readonly"] = True        # one rootfs shared by every container
        spec["hostname"] = cid[:12]
        (path / "config.json").write_text(json.dumps(spec))
        return path

    async def run_containers(self, count: int) -> list[float]:
        bundles = []
        for _ in range(count):
            cid = f"bench{new_id()[:20]}"
            bundles.append((cid, self._bundle(cid)))
        start = time.monotonic()
        latencies = await asyncio.gather(*(self._run_one(cid, path, start) for cid, path in bundles))
        await self.remove_all()
        return list(latencies)

    async def _run_one(self, cid: str, path: Path, start: float) -> float:
        self.ids.append(cid)
        with _open_for_write(path / "runc.err") as err:
            proc = await asyncio.create_subprocess_exec(
                RUNC, "--root", str(self.state_root), "run", "-d", "--bundle", str(path), cid,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            code = await asyncio.wait_for(proc.wait(), STEP_TIMEOUT)
        took = time.monotonic() - start
        if code != 0:
            raise RuntimeError(f"runc run {cid} exited {code}: {(path / 'runc.err').read_text()[-300:]}")
        return took

    async def remove_all(self) -> None:
        ids, self.ids = self.ids, []
        async def remove(cid: str) -> None:
            kill = await asyncio.create_subprocess_exec(RUNC, "--root", str(self.state_root), "kill", cid, "KILL",
                                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await kill.wait()
            delete = await asyncio.create_subprocess_exec(RUNC, "--root", str(self.state_root), "delete", "--force",
                                                          cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await delete.wait()
        await asyncio.gather(*(remove(cid) for cid in ids))
        for bundle_dir in (self.root / "bundles").iterdir() if (self.root / "bundles").is_dir() else []:
            shutil.rmtree(bundle_dir, ignore_errors=True)

    async def clean(self) -> None:
        if self.state_root.is_dir():
            self.ids = [p.name for p in self.state_root.iterdir() if p.is_dir()]
            await self.remove_all()
        await asyncio.to_thread(self._remove_cgroups)
        rootfs.unmount_below(self.root)

    def _remove_cgroups(self) -> None:
        for top in Path("/sys/fs/cgroup").iterdir():
            remove_cgroup_tree(top / self.cgroup_parent)


def _open_for_write(path: Path) -> BinaryIO:
    return open(path, "wb")  # the caller closes it


# -- main ---------------------------------------------------------------------------------------------

async def run_bench(root: Path, iterations: int, burst: int, burst_rounds: int,
                    profiler: cProfile.Profile | None) -> dict[str, Any]:
    image = build_busybox_image(root, cmd=COMMAND, healthcheck={}, labels={"org.shoal.bench": "runtime"})
    archive = write_docker_save(image, root / "image.tar", [IMAGE])
    shoal = ShoalWorker(root / "shoal", archive)
    out: dict[str, Any] = {}
    bare: BareRunc | None = None
    try:
        await shoal.start()
        assert shoal.tasks is not None
        record = shoal.tasks.images.get(IMAGE)  # type: ignore[attr-defined]
        layers = shoal.tasks.images.rootfs_layers(record)
        template = config_from_task("bench", "bench", {"ContainerSpec": {"Image": IMAGE, "Args": COMMAND}},
                                    shoal.tasks.images.image_config(record), list(layers), hostname="bench")
        bare = BareRunc(root / "bare", list(layers), template)
        await asyncio.to_thread(bare.prepare)
        await shoal.run_tasks(1)     # warm both paths once (page cache, binaries), untimed
        await bare.run_containers(1)

        single: dict[str, list[float]] = {"shoal": [], "runc": [], "assigned_to_ready": [], "ready_to_running": []}
        for _ in range(iterations):  # interleaved, so drift on the machine hits both alike
            if profiler is not None:
                profiler.enable()
            latencies, split = await shoal.run_tasks(1)
            if profiler is not None:
                profiler.disable()
            single["shoal"] += latencies
            single["assigned_to_ready"] += split["assigned_to_ready"]
            single["ready_to_running"] += split["ready_to_running"]
            single["runc"] += await bare.run_containers(1)
        out["one_container"] = {
            "shoal": summary_ms(single["shoal"]), "runc": summary_ms(single["runc"]),
            "shoal_split": {"assigned_to_ready": summary_ms(single["assigned_to_ready"]),
                            "ready_to_running": summary_ms(single["ready_to_running"])},
        }
        burst_shoal: list[float] = []
        floor: list[float] = []
        burst_split: dict[str, list[float]] = {"assigned_to_ready": [], "ready_to_running": []}
        rounds: dict[str, list[float]] = {"shoal": [], "runc": []}
        for n in range(burst_rounds):   # alternated, and each system goes first every other round
            for system in (("shoal", "runc") if n % 2 == 0 else ("runc", "shoal")):
                if system == "shoal":
                    got, got_split = await shoal.run_tasks(burst)
                    burst_shoal += got
                    for k, v in got_split.items():
                        burst_split[k] += v
                else:
                    got = await bare.run_containers(burst)
                    floor += got
                rounds[system].append(round(pct(got, 50) * 1e3, 2))
        out[f"burst_{burst}"] = {
            "rounds": burst_rounds,
            "shoal": {**summary_ms(burst_shoal), "all_running_ms": round(max(burst_shoal) * 1e3, 2),
                      "round_p50_ms": rounds["shoal"]},
            "runc": {**summary_ms(floor), "all_running_ms": round(max(floor) * 1e3, 2),
                     "round_p50_ms": rounds["runc"]},
            "shoal_split": {k: summary_ms(v) for k, v in burst_split.items()},
        }
        out["ratio_shoal_over_runc"] = {
            case: {k: round(out[case]["shoal"][k] / out[case]["runc"][k], 2) for k in ("p50_ms", "p99_ms")}
            for case in ("one_container", f"burst_{burst}")}
        out["meets_target"] = all(r <= TARGET_RATIO for c in out["ratio_shoal_over_runc"].values()
                                  for r in c.values())
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        await shoal.clean()
        if bare is not None:
            await bare.clean()
    return out


def profile_summary(profiler: cProfile.Profile, top: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = [{"function": f"{os.path.relpath(f) if f.startswith('/') else f}:{line}:{fn}", "calls": calls,
             "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)}
            for (f, line, fn), (_cc, calls, tt, ct, _callers) in stats.stats.items()]  # type: ignore[attr-defined]
    return sorted(rows, key=lambda r: r["cumtime_s"], reverse=True)[:top]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--iterations", type=int, default=20, help="single-container runs per system")
    ap.add_argument("--burst", type=int, default=50, help="containers started at once")
    ap.add_argument("--burst-rounds", type=int, default=3,
                    help="burst rounds per system, alternated (latencies pooled)")
    ap.add_argument("--profile", action="store_true", help="cProfile the shoal single-container runs")
    ap.add_argument("--profile-top", type=int, default=25)
    args = ap.parse_args(argv)
    if args.iterations < 1 or args.burst < 1 or args.burst_rounds < 1:
        ap.error("--iterations, --burst and --burst-rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if os.geteuid() != 0 or not os.access(RUNC, os.X_OK):
        return {"bench": "runtime", "error": "needs root and runc"}
    profiler = cProfile.Profile() if args.profile else None
    result: dict[str, Any] = {
        "bench": "runtime",
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "runc": subprocess.run([RUNC, "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        "iterations": args.iterations, "burst": args.burst, "burst_rounds": args.burst_rounds,
        "command": COMMAND,
        "target": f"shoal p50 and p99 <= {TARGET_RATIO}x bare runc",
    }
    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as tmp:
        result.update(asyncio.run(run_bench(Path(tmp), args.iterations, args.burst, args.burst_rounds,
                                            profiler)))
    if profiler is not None:
        result["profile_shoal_single"] = profile_summary(profiler, args.profile_top)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
