"""Benchmark: the overlay data path against the underlay, and what a network costs at task start,
on a lab, in one run (issue 11).

Prints one JSON document. A lab (cli.lab.Lab, named `ob<pid>`) of one manager and one worker, each
a network namespace running a real `shoal daemon`, joined by the lab's bridge (198.18.0.x). An
overlay network and two services of one sleeping busybox task each, pinned to different hosts by
placement constraints (`node.hostname==manager-1`, `node.hostname==worker-1`). Then:

  - throughput: iperf3 (Debian's, installed by deploy/bench-setup.sh) runs in the tasks' network
    namespaces (`nsenter --net=<data dir>/network/netns/s-<task id>` with the host's iperf3: the
    namespace the container runs in), server on manager-1's task, client on worker-1's, over the
    overlay addresses; and the same two hosts' underlay: iperf3 in the lab hosts' own namespaces
    over their 198.18.0.x addresses. One TCP stream for `--seconds` (after 1 s of warm-up that is
    omitted), `--reps` times per path, the two paths alternated and the first one swapped every rep;
    the median Gbit/s of each path counts. Goal: overlay >= 0.9x the underlay.
  - the same with each lab host on its own CPU (`throughput_hosts_on_own_cpus`, 2+ CPUs; the
    figure the goal is judged on): iperf3's server pinned to CPU 1 and client to CPU 0, and RPS
    on each lab host's wire steering its receive work to its own CPU (`netlab.receive_on_cpus`). A
    veth delivers in the sender's softirq, so otherwise one CPU runs both hosts' network stacks.
  - round trip: a TCP request/response loop (one connection, TCP_NODELAY, a 1-byte request and a
    1-byte reply, as netperf's TCP_RR; Python on both ends, the same code on both paths, so the
    constant cost of the interpreter is in both figures and `added_us` is the overlay's own cost),
    `--rr-count` round trips per rep after 200 unmeasured ones, same namespaces, same alternation;
    median and p99 over all reps. No goal in the issue: reported.
  - assignment -> RUNNING: services of one task each, pinned to worker-1, created one at a time
    (each waits until its task runs), alternately without a network and with one overlay attached
    (a network of its own, created for this phase), `--tasks` of each kind after one unmeasured
    task of each kind (the first with-network task also sets the network up on the node: reported
    apart in `first_task_ms`). A task's status keeps only its latest timestamp, so its
    history is read from manager-1's Raft log (a copy of the WAL, replayed read-only, with the
    store's version checks so that only applied writes count): from the ASSIGNED timestamp (the
    scheduler's clock) to the RUNNING timestamp (the worker's report); both are this machine's
    clock. Each task's RUNNING timestamp in the log is checked against `GET /tasks`. Median of each
    kind; goal: with a network <= 1.3x without. `created_to_running_ms` (from the task's CreatedAt,
    so including allocation and scheduling) is reported beside it, and `split_median_ms` cuts the
    latency at the worker's PREPARING report.

Only the lab's own namespaces are ever targeted: each server binds a lab or an overlay address
inside the lab. Every process the bench starts is stopped by PID and the lab is torn down at the end,
on failure and on Ctrl-C or SIGTERM too.
With --realtime, both iperf3 ends run at SCHED_FIFO, and so do both daemons (and what they fork)
while the tasks are started (bench/support/realtime.py): the figures are then the code's path,
not the queue of a machine other work keeps busy.
Usage: python bench/overlay_bench.py [--reps 5] [--seconds 5] [--rr-count 2000] [--tasks 10]
                                     [--timeout 60] [--realtime]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.support import netlab
from bench.support.netlab import (
    call,
    overlay_address,
    run_bench,
    running_tasks,
    sandbox_path,
    service_spec,
    uninterrupted,
    up_lab,
)
from bench.support.netperf import (
    IPERF3,
    REALTIME_PRIORITY,
    RR_WARMUP,
    BenchError,
    Path_,
    iperf,
    link_stats,
    quantile,
    round_trips,
    stop_all,
)
from bench.support.realtime import realtime
from ca.encryption import KeyFile
from cli.lab import Lab
from model import TaskState, parse_time
from node.state import LocalSwarmState
from raft.types import EntryType
from raft.wal import WAL

SERVER_HOST, CLIENT_HOST = "manager-1", "worker-1"
THROUGHPUT_GOAL = 0.9          # overlay / underlay, at least
START_GOAL = 1.3               # with a network / without, at most

def data_path(paths: dict[str, Path_], reps: int, seconds: int, rr_count: int, timeout: float,
              realtime: bool, cpus: tuple[int, int] | None = None) -> dict[str, Any]:
    """Throughput and (unless `cpus`) round trips of both paths; `cpus` pins iperf3's (server,
    client) processes."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    rtts: dict[str, list[float]] = {name: [] for name in paths}
    order = list(paths)
    for rep in range(reps):
        for name in (order if rep % 2 == 0 else order[::-1]):
            runs[name].append(iperf(paths[name], seconds, timeout, realtime, cpus))
        if not cpus:
            for name in (order if rep % 2 == 0 else order[::-1]):
                rtts[name].extend(round_trips(paths[name], rr_count, timeout))
    throughput: dict[str, Any] = {
        "method": f"iperf3, 1 TCP stream, {seconds} s (+1 s omitted) per run, {reps} runs per path, "
                  "paths alternated; median" + (f"; both ends at SCHED_FIFO {REALTIME_PRIORITY}" if realtime else "")
                  + (f"; server pinned to CPU {cpus[0]}, client to CPU {cpus[1]}" if cpus else ""),
    }
    for name in paths:
        rates = [r["gbit_s"] for r in runs[name]]
        cpu = [r["cpu_s_per_gib"] for r in runs[name] if r["cpu_s_per_gib"] is not None]
        throughput[name] = {"median_gbit_s": round(statistics.median(rates), 3),
                            "median_cpu_s_per_gib": round(statistics.median(cpu), 4) if cpu else None,
                            "runs": runs[name]}
    ratio = throughput["overlay"]["median_gbit_s"] / throughput["underlay"]["median_gbit_s"]
    pairs = [o["gbit_s"] / u["gbit_s"] for o, u in zip(runs["overlay"], runs["underlay"], strict=True)]
    cpu_o, cpu_u = throughput["overlay"]["median_cpu_s_per_gib"], throughput["underlay"]["median_cpu_s_per_gib"]
    throughput.update({
        "ratio_overlay_over_underlay": round(ratio, 3),
        "ratio_per_rep": [round(p, 3) for p in pairs],
        "cpu_per_byte_overlay_over_underlay": round(cpu_o / cpu_u, 3) if cpu_o and cpu_u else None,
        "goal": f"overlay >= {THROUGHPUT_GOAL}x underlay", "meets_goal": ratio >= THROUGHPUT_GOAL,
    })
    if cpus:
        return {"throughput": throughput}
    rtt: dict[str, Any] = {
        "method": f"TCP request/response, 1 connection, TCP_NODELAY, 1-byte request and reply, Python on both "
                  f"ends; {rr_count} round trips per rep after {RR_WARMUP} unmeasured, {reps} reps per path",
    }
    for name in paths:
        samples = rtts[name]
        rtt[name] = {"n": len(samples), "median_us": round(statistics.median(samples), 1),
                     "p99_us": round(quantile(samples, 0.99), 1), "min_us": round(min(samples), 1)}
    rtt["ratio_median_overlay_over_underlay"] = round(rtt["overlay"]["median_us"] / rtt["underlay"]["median_us"], 3)
    rtt["added_us"] = round(rtt["overlay"]["median_us"] - rtt["underlay"]["median_us"], 1)
    return {"throughput": throughput, "round_trip": rtt}


# -- the lab ---------------------------------------------------------------------------------------

async def start_service(manager: str, name: str, host: str, networks: list[str], timeout: float) -> dict[str, Any]:
    await call(manager, "POST", "/services/create", service_spec(name, "overlay", host=host, networks=tuple(networks)))
    return (await running_tasks(manager, name, 1, timeout))[0]


# -- assignment -> RUNNING, from the Raft log ------------------------------------------------------

def task_histories(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Per task: its CreatedAt and the first timestamp it was written with in each state, from a
    copy of the WAL of the manager whose daemon data dir is `data_dir` (decrypted with its data key:
    the bench's swarm has no autolock). Entries are checked as the store checks them (every change's
    expected version, all or nothing), so a write the store rejected never counts."""
    key_file = KeyFile.load(LocalSwarmState.certs_dir(data_dir))
    if key_file is None or key_file.locked:
        raise RuntimeError(f"cannot read the Raft log in {data_dir}: no data key in the clear (autolock?)")
    wal_dir = LocalSwarmState.raft_dir(data_dir) / "wal"
    with tempfile.TemporaryDirectory(prefix="overlay-bench-wal-") as tmp:
        for segment in sorted(wal_dir.glob("*.wal")):
            shutil.copy(segment, tmp)
        wal = WAL(tmp, cipher=key_file.open())
        replay = wal.open()
        wal.close()
    versions: dict[tuple[str, str], int] = {}
    out: dict[str, dict[str, Any]] = {}
    for entry in replay.entries:
        if entry.type != EntryType.NORMAL or not entry.data:
            continue
        doc = msgpack.unpackb(entry.data, raw=False)
        if not isinstance(doc, dict):
            continue
        if "restore" in doc:
            versions.clear()
            continue
        changes = doc.get("c") or []

        def applies(op: str, table: str, expected: int, rec: dict[str, Any]) -> bool:
            current = versions.get((table, rec["id"]))
            if op == "create":
                return current is None
            return current is None or current == expected   # None: written before this log began

        if not all(applies(*change) for change in changes):
            continue
        for op, table, _, rec in changes:
            key = (table, rec["id"])
            if op == "delete":
                versions.pop(key, None)
                continue
            versions[key] = entry.index
            if table == "tasks":
                history = out.setdefault(rec["id"], {"created_at": rec.get("created_at", ""), "states": {}})
                history["states"].setdefault(TaskState(rec["status"][0]).api, rec["status"][1])
    return out


def summary_ms(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "median_ms": round(statistics.median(values), 1),
            "p90_ms": round(quantile(values, 0.9), 1), "min_ms": round(min(values), 1),
            "max_ms": round(max(values), 1), "all_ms": [round(v, 1) for v in values]}


async def start_latency(lab: Lab, count: int, timeout: float, rt: bool = False) -> dict[str, Any]:
    manager = lab.node(SERVER_HOST).host
    network = (await call(manager, "POST", "/networks/create", {"Name": "oblat", "Driver": "overlay"}))["Id"]
    started: list[tuple[str, int, dict[str, Any]]] = []       # (kind, round, task as the API gave it)
    with realtime([lab.node(h).pid for h in (SERVER_HOST, CLIENT_HOST)], rt):
        for i in range(count + 1):                              # round 0: unmeasured, one of each
            kinds = ("without_network", "with_network") if i % 2 == 0 else ("with_network", "without_network")
            for kind in kinds:
                name = f"lat-{'n' if kind == 'with_network' else 'p'}{i}"
                task = await start_service(manager, name, CLIENT_HOST,
                                           [network] if kind == "with_network" else [], timeout)
                started.append((kind, i, task))
    histories = task_histories(Path(lab.node(SERVER_HOST).data_dir))
    result: dict[str, Any] = {
        "method": "services of 1 task pinned to worker-1, created one at a time, kinds alternated (first kind "
                  f"swapped every round), {count} of each after 1 unmeasured of each; ASSIGNED timestamp (the "
                  "scheduler's) to RUNNING timestamp (the worker's), both from manager-1's Raft log; median"
                  + (f"; both daemons (and what they start) at SCHED_FIFO {REALTIME_PRIORITY}" if rt else ""),
    }
    assigned: dict[str, list[float]] = {"without_network": [], "with_network": []}
    created: dict[str, list[float]] = {"without_network": [], "with_network": []}
    # where the time goes: after its PREPARING report the worker makes the sandbox (interfaces, DNS)
    # and the container, and starts it (STARTING is not always in the log: the dispatcher writes
    # only the latest of the reports that arrive together)
    steps = (("assigned", "preparing"), ("preparing", "running"))
    split: dict[str, dict[str, list[float]]] = {k: {f"{a}_to_{b}": [] for a, b in steps} for k in assigned}
    mismatches = []
    for kind, i, task in started:
        states = (histories.get(task["ID"]) or {}).get("states") or {}
        if "assigned" not in states or "running" not in states:
            raise BenchError(f"task {task['ID']}: states in the Raft log: {sorted(states) or 'none'}")
        if states["running"] != task["Status"]["Timestamp"]:
            mismatches.append(task["ID"])
        running = parse_time(states["running"])
        a_ms = (running - parse_time(states["assigned"])) * 1000
        c_ms = (running - parse_time(task["CreatedAt"])) * 1000
        if i == 0:   # unmeasured; the first with a network also set the network up on worker-1
            result.setdefault("first_task_ms", {})[
                "with_network_first_on_node" if kind == "with_network" else kind] = round(a_ms, 1)
            continue
        assigned[kind].append(a_ms)
        created[kind].append(c_ms)
        for a, b in steps:
            if a in states and b in states:
                split[kind][f"{a}_to_{b}"].append((parse_time(states[b]) - parse_time(states[a])) * 1000)
    for kind in assigned:
        result[kind] = summary_ms(assigned[kind])
    ratio = result["with_network"]["median_ms"] / result["without_network"]["median_ms"]
    result.update({
        "ratio_median_with_over_without": round(ratio, 3),
        "goal": f"with a network <= {START_GOAL}x without", "meets_goal": ratio <= START_GOAL,
        "created_to_running_ms": {kind: {"median_ms": round(statistics.median(v), 1),
                                         "p90_ms": round(quantile(v, 0.9), 1)} for kind, v in created.items()},
        "split_median_ms": {kind: {step: round(statistics.median(v), 1) for step, v in parts.items() if v}
                            for kind, parts in split.items()},
        "log_running_timestamps_equal_api": not mismatches,
    })
    if mismatches:
        result["log_mismatches"] = mismatches
    for _, _, task in started:        # stop them now, so that nothing of this phase stays running
        with contextlib.suppress(Exception):
            await call(manager, "DELETE", f"/services/{task['ServiceID']}")
    return result


# -- the run ---------------------------------------------------------------------------------------

def bench(args: argparse.Namespace, result: dict[str, Any]) -> None:
    lab = Lab(f"ob{os.getpid() % 100000:05d}")
    try:
        result["lab"] = up_lab(lab, managers=1, workers=1)

        async def setup() -> tuple[str, dict[str, Any], dict[str, Any]]:
            manager = lab.node(SERVER_HOST).host
            net = (await call(manager, "POST", "/networks/create", {"Name": "obench", "Driver": "overlay"}))["Id"]
            server, client = await asyncio.gather(
                start_service(manager, "ob-server", SERVER_HOST, [net], args.timeout),
                start_service(manager, "ob-client", CLIENT_HOST, [net], args.timeout))
            return net, server, client

        net, server_task, client_task = asyncio.run(setup())
        host_ns = {h: f"/run/netns/{lab.node(h).ns}" for h in (SERVER_HOST, CLIENT_HOST)}
        client_sandbox = sandbox_path(lab, CLIENT_HOST, client_task)
        paths = {
            "underlay": Path_("underlay", host_ns[SERVER_HOST], lab.node(SERVER_HOST).address,
                              host_ns[CLIENT_HOST], host_ns[CLIENT_HOST]),
            "overlay": Path_("overlay", sandbox_path(lab, SERVER_HOST, server_task), overlay_address(server_task, net),
                             client_sandbox, host_ns[CLIENT_HOST]),
        }
        result["lab"].update({
            "underlay": {"server": f"{SERVER_HOST} {paths['underlay'].server_ip}",
                         "mtu": link_stats(host_ns[CLIENT_HOST])["mtu"]},
            "overlay": {"server": f"task {server_task['ID'][:12]} on {SERVER_HOST} {paths['overlay'].server_ip}",
                        "client": f"task {client_task['ID'][:12]} on {CLIENT_HOST} "
                                  f"{overlay_address(client_task, net)}",
                        "mtu": link_stats(client_sandbox)["mtu"]},
        })
        try:
            result.update(data_path(paths, args.reps, args.seconds, args.rr_count, args.timeout, args.realtime))
        except BenchError as e:
            result["throughput"] = {"error": str(e)}
        if (os.cpu_count() or 1) >= 2:
            try:
                with netlab.receive_on_cpus({lab.node(SERVER_HOST).ns: 1, lab.node(CLIENT_HOST).ns: 0}):
                    split = data_path(paths, args.reps, args.seconds, args.rr_count, args.timeout, args.realtime,
                                      cpus=(1, 0))["throughput"]
                result["throughput_hosts_on_own_cpus"] = split
            except (BenchError, subprocess.SubprocessError) as e:
                result["throughput_hosts_on_own_cpus"] = {"error": str(e)}
        try:
            result["assignment_to_running"] = asyncio.run(start_latency(lab, args.tasks, args.timeout,
                                                                        args.realtime))
        except BenchError as e:
            result["assignment_to_running"] = {"error": str(e)}
    finally:
        with uninterrupted():
            stop_all()
            lab.down()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--reps", type=int, default=5, help="iperf3 runs and round-trip loops per path")
    ap.add_argument("--seconds", type=int, default=5, help="seconds per iperf3 run (after 1 s omitted)")
    ap.add_argument("--rr-count", type=int, default=2000, help="measured round trips per loop")
    ap.add_argument("--tasks", type=int, default=10, help="measured task starts of each kind")
    ap.add_argument("--timeout", type=float, default=60.0, help="bound on each wait, in seconds")
    ap.add_argument("--realtime", action="store_true",
                    help=f"run both iperf3 ends, and both daemons while tasks are started, at SCHED_FIFO "
                         f"{REALTIME_PRIORITY}, so that other load on the machine does not decide the figures "
                         "(they then take the CPUs they need, a few seconds at a time)")
    args = ap.parse_args(argv)
    for name, low, high in (("reps", 1, 20), ("seconds", 1, 60), ("rr_count", 10, 100_000), ("tasks", 1, 50)):
        if not low <= getattr(args, name) <= high:
            ap.error(f"--{name.replace('_', '-')} must be in {low}..{high}")
    if not 5 <= args.timeout <= 600:
        ap.error("--timeout must be in 5..600")
    return args


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], int]:
    args = parse_args(argv)
    result: dict[str, Any] = {
        "bench": "overlay",
        "settings": {"reps": args.reps, "seconds": args.seconds, "rr_count": args.rr_count, "tasks": args.tasks,
                     "realtime": args.realtime},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "loadavg_start": list(os.getloadavg())},
    }
    if os.geteuid() != 0 or not shutil.which("runc"):
        result["error"] = "needs root and runc"
        return result, 0
    if not os.access(IPERF3, os.X_OK):
        result["error"] = f"{IPERF3} is not installed (run deploy/bench-setup.sh)"
        return result, 0
    result["iperf3"] = subprocess.run([IPERF3, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    status = run_bench(result, lambda: bench(args, result),
                       ("throughput_hosts_on_own_cpus" if (os.cpu_count() or 1) >= 2 else "throughput",
                        "assignment_to_running"))
    return result, status


if __name__ == "__main__":
    doc, code = main()
    print(json.dumps(doc, indent=2))
    sys.exit(code)
