"""Benchmark: one manager placing many tasks on many simulated nodes (placement rate, manager RSS).

Prints one JSON document. In one process:
  - the manager: a Store whose proposer applies each proposal on the next loop turn (every write
    is msgpack-encoded and applied as a committed Raft entry would be, without the consensus
    round trip, but yielding to other coroutines as a proposal awaiting its commit does), the
    leader's
    real reconcilers (manager.swarm.leader_loops.Orchestration: replicated and global
    orchestrators, task reaper, scheduler) and the real Dispatcher with its heartbeat monitor;
  - the nodes: `--nodes` simulated workers, each holding a real dispatcher session in-process
    (Dispatcher.session: the complete set, then incremental assignments), sending heartbeats
    (Dispatcher.heartbeat) and reporting each newly assigned task RUNNING in batches
    (Dispatcher.update_status), as the agent does once a container started. `--no-agents` keeps
    the nodes silent and runs no heartbeat monitor (placement only).
Workload: S services of R replicas (S*R = `--tasks`) created back to back, as the API would.
Reported: seconds and tasks/s from the first create to all tasks ASSIGNED, and to all RUNNING;
manager RSS (VmHWM, VmRSS) before and after; nodes wrongly marked down during the run.
Target: >= 10,000 tasks/s placed. `--profile` adds the top functions of a cProfile of the run.
The manager's collector thresholds (manager.store.heap.tune_gc, as the daemon applies them) are
used unless `--default-gc`; `gc_threshold` in the JSON says which.
Usage: python bench/scale_bench.py [--nodes 1000] [--tasks 100000] [--replicas 1000] [--no-agents]
                                   [--profile] [--timeout 600] [--default-gc]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import io
import json
import os
import platform
import pstats
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.support.swarm_sim import make_node
from manager.dispatcher import Dispatcher
from manager.specs import normalize_service_spec
from manager.store import Event, Store, WriteTx
from manager.store.heap import tune_gc
from manager.swarm.leader_loops import Orchestration
from model import Service, TaskState, format_time, new_id
from rpc.errors import RpcError

TARGET_TASKS_PER_S = 10_000
CREATE_CHUNK = 500  # nodes registered per store write


class YieldingProposer:
    """Applies each proposal on the next turn of the event loop. A Raft proposal always awaits
    its commit, so other coroutines (heartbeats, status reports) run between proposals; an
    InMemoryProposer, which applies inline, would turn a batch of thousands of writes into one
    uninterrupted stall that no real manager has."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def propose(self, data: bytes) -> None:
        await asyncio.sleep(0)
        self._store.apply(data)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_kib() -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of this process, in KiB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


class Progress:
    """Counts slots (service, slot number) whose task reached ASSIGNED and RUNNING, from a store
    subscription, and sets an event when each count reaches the total. Counting slots, not task
    IDs, keeps replacement tasks (after a node was marked down) from being counted twice."""

    def __init__(self, store: Store, total: int) -> None:
        self.total = total
        self.assigned: set[tuple[str, int]] = set()
        self.running: set[tuple[str, int]] = set()
        self.assigned_at = 0.0
        self.running_at = 0.0
        self.all_assigned = asyncio.Event()
        self.all_running = asyncio.Event()
        self.marked_down = 0            # times a node was marked down during the run
        self._sub = store.watch(tables=("tasks", "nodes"), limit=10**9)

    def close(self) -> None:
        self._sub.close()

    async def run(self) -> None:
        while True:
            await self._sub.wait()
            for event in self._sub.drain():
                self._see(event)

    def _see(self, event: Event) -> None:
        if event.op == "delete":
            return
        if event.table == "nodes":
            if event.obj.state == "down" and (event.old is None or event.old.state != "down"):
                self.marked_down += 1
            return
        task = event.obj
        state = task.status.state
        slot = (task.service_id, task.slot)
        if state >= TaskState.ASSIGNED and slot not in self.assigned:
            self.assigned.add(slot)
            if len(self.assigned) == self.total:
                self.assigned_at = time.monotonic()
                self.all_assigned.set()
        if state == TaskState.RUNNING and slot not in self.running:
            self.running.add(slot)
            if len(self.running) == self.total:
                self.running_at = time.monotonic()
                self.all_running.set()


class LoopLag:
    """The longest time the event loop was unavailable (a 50 ms sleep overshooting), which is
    what delays heartbeats and status reports of every node."""

    def __init__(self) -> None:
        self.max_s = 0.0

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.05)
            self.max_s = max(self.max_s, time.monotonic() - before - 0.05)


class SimulatedNode:
    """One worker speaking the dispatcher protocol in-process: a session stream, heartbeats, and
    batched status reports (each newly assigned task is reported RUNNING)."""

    def __init__(self, dispatcher: Dispatcher, node_id: str, hostname: str) -> None:
        self.dispatcher = dispatcher
        self.node_id = node_id
        self.hostname = hostname
        self.session_id = ""
        self.ready = asyncio.Event()
        self.reported: set[str] = set()
        self.session_restarts = 0
        self.opened = asyncio.Event()   # the first session is open
        self._pending: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Hold a session; when the dispatcher ends it (e.g. the node was marked down), open a
        new one, as the agent does."""
        while True:
            self.ready.clear()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._session())
                    await self.ready.wait()
                    group.create_task(self._heartbeats())
                    group.create_task(self._reporter())
            except* RpcError:
                self.session_restarts += 1

    async def _session(self) -> None:
        params = {"description": {"Hostname": self.hostname,
                                  "Platform": {"OS": "linux", "Architecture": "x86_64"},
                                  "Resources": {"NanoCPUs": 4 * 10**9, "MemoryBytes": 8 << 30},
                                  "Engine": {"EngineVersion": "shoal-bench", "Labels": {}}},
                  "addr": "127.0.0.1"}
        async for message in self.dispatcher.session(self.node_id, params):
            kind = message.get("kind")
            if kind == "session":
                self.session_id = message["session_id"]
                self.ready.set()
                self.opened.set()
            elif kind == "assignments":
                records = message.get("tasks") if message.get("type") == "complete" else \
                    [c["task"] for c in message.get("changes") or [] if c.get("action") == "update"]
                for rec in records or []:
                    self._consider(rec)

    def _consider(self, rec: dict[str, Any]) -> None:
        task_id = rec["id"]
        state = TaskState(rec["status"][0])
        if task_id in self.reported or rec["desired_state"] != int(TaskState.RUNNING):
            return
        if TaskState.ASSIGNED <= state < TaskState.RUNNING:
            self.reported.add(task_id)
            self._pending[task_id] = {"State": "running", "Timestamp": format_time(time.time()),
                                      "Message": "started"}
            self._wake.set()

    async def _heartbeats(self) -> None:
        while True:
            reply = await self.dispatcher.heartbeat(self.node_id, {"session_id": self.session_id})
            await asyncio.sleep(float(reply["period"]))

    async def _reporter(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            updates = [{"task_id": tid, "status": st} for tid, st in batch.items()]
            if not updates:
                continue
            await self.dispatcher.update_status(self.node_id, {"session_id": self.session_id, "updates": updates})


def _create_all(objects: list[Any], tx: WriteTx) -> None:
    for obj in objects:
        tx.create(obj)


def service_for(index: int, replicas: int) -> Service:
    spec = {"Name": f"scale-{index}",
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "100000"]},
                             "RestartPolicy": {"Condition": "any", "Delay": 5_000_000_000}},
            "Mode": {"Replicated": {"Replicas": replicas}}}
    return Service(id=new_id(), spec=normalize_service_spec(spec))


async def run_bench(nodes: int, tasks: int, replicas: int, agents: bool, timeout: float,
                    profiler: cProfile.Profile | None) -> dict[str, Any]:
    store = Store(watch_limit=10**6)
    store.proposer = YieldingProposer(store)
    dispatcher = Dispatcher(store)
    made = [make_node(f"sim-{i:05d}") for i in range(nodes)]
    for first in range(0, nodes, CREATE_CHUNK):
        await store.update(functools.partial(_create_all, made[first:first + CREATE_CHUNK]))
    services = [service_for(i, min(replicas, tasks - i * replicas)) for i in range(-(-tasks // replicas))]
    out: dict[str, Any] = {"nodes": nodes, "tasks": tasks, "services": len(services),
                           "replicas_per_service": replicas, "agents": agents}
    progress = Progress(store, tasks)
    simulated = [SimulatedNode(dispatcher, n.id, n.description["Hostname"]) for n in made]
    memory_before = memory_kib()
    try:
        async with asyncio.TaskGroup() as group:
            lag = LoopLag()
            workers = [group.create_task(progress.run(), name="progress"),
                       group.create_task(lag.run(), name="loop-lag")]
            if agents:  # silent nodes hold no session: the heartbeat monitor would mark them down
                workers.append(group.create_task(dispatcher.run(), name="dispatcher"))
                workers += [group.create_task(s.run(), name=f"node-{s.hostname}") for s in simulated]
                t0 = time.monotonic()
                await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in simulated)), timeout)
                out["sessions_open_s"] = round(time.monotonic() - t0, 3)
            workers.append(group.create_task(Orchestration(store).run(), name="orchestration"))
            gc.collect()
            if profiler is not None:
                profiler.enable()
            cpu_start = _cpu_seconds()
            start = time.monotonic()
            for service in services:
                await store.update(functools.partial(_create_all, [service]))
            out["create_requests_s"] = round(time.monotonic() - start, 3)
            try:
                await asyncio.wait_for(progress.all_assigned.wait(), timeout)
                out["assigned_s"] = round(progress.assigned_at - start, 3)
                out["placement_rate_tasks_per_s"] = round(tasks / (progress.assigned_at - start))
                # CPU seconds of this process until then: the rate the manager would reach with a
                # core of its own (this machine may be shared).
                out["assigned_cpu_s"] = round(_cpu_seconds() - cpu_start, 3)
                out["placement_rate_per_cpu_s"] = round(tasks / out["assigned_cpu_s"])
                if agents:
                    await asyncio.wait_for(progress.all_running.wait(), timeout)
                    out["running_s"] = round(progress.running_at - start, 3)
                    out["running_rate_tasks_per_s"] = round(tasks / (progress.running_at - start))
            except TimeoutError:
                out["error"] = (f"timeout after {timeout:.0f}s: {len(progress.assigned)} assigned, "
                                f"{len(progress.running)} running of {tasks}")
            finally:
                if profiler is not None:
                    profiler.disable()
            for worker in workers:
                worker.cancel()
    finally:
        progress.close()
    out["loop_stall_max_s"] = round(lag.max_s, 3)
    out["session_restarts"] = sum(s.session_restarts for s in simulated)
    out["tasks_made"] = store.view(lambda tx: len(tx.all("tasks")))
    out["nodes_marked_down"] = progress.marked_down
    out["store_index"] = store.index
    out["memory_kib"] = {"before_tasks": memory_before, "after": memory_kib()}
    return out


def profile_summary(profiler: cProfile.Profile, top: int) -> dict[str, Any]:
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    rows = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{os.path.relpath(filename) if filename.startswith('/') else filename}:{line}:{func}",
                     "calls": calls, "tottime_s": round(tottime, 3), "cumtime_s": round(cumtime, 3)})
    return {"by_tottime": sorted(rows, key=lambda r: r["tottime_s"], reverse=True)[:top],
            "by_cumtime": sorted(rows, key=lambda r: r["cumtime_s"], reverse=True)[:top]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--replicas", type=int, default=1000, help="replicas per service")
    ap.add_argument("--no-agents", action="store_true", help="nodes hold no sessions (placement only)")
    ap.add_argument("--profile", action="store_true", help="add a cProfile summary of the timed run")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per phase")
    ap.add_argument("--default-gc", action="store_true",
                    help="keep CPython's default collector thresholds instead of the manager's (tune_gc)")
    args = ap.parse_args(argv)
    for name in ("nodes", "tasks", "replicas"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    profiler = cProfile.Profile() if args.profile else None
    gc_threshold = gc.get_threshold() if args.default_gc else tune_gc()  # as the daemon sets it
    result: dict[str, Any] = {
        "bench": "scale",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "manager": "Store(proposer applying on the next loop turn) + leader reconcilers + Dispatcher, "
                   "in one process",
        "target_tasks_per_s": TARGET_TASKS_PER_S,
        "gc_threshold": list(gc_threshold),
    }
    result.update(asyncio.run(run_bench(args.nodes, args.tasks, args.replicas, not args.no_agents,
                                        args.timeout, profiler)))
    rate = result.get("placement_rate_tasks_per_s")
    result["meets_target"] = bool(rate and rate >= TARGET_TASKS_PER_S)
    if profiler is not None:
        result["profile"] = profile_summary(profiler, args.profile_top)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
