"""Failure detection: SIGKILL a worker's daemon in the lab, time until its tasks run elsewhere.

With default settings (5 s heartbeats). A run: a lab of 1 manager + W workers, a service of N
replicas of a shell that traps SIGTERM and sleeps; then, per trial, the daemon of a worker that
runs some of the tasks is partitioned from every other host and then killed with SIGKILL (a dead
machine: nothing of it, not even its kernel closing the daemon's connections, reaches the others;
the manager notices through TCP keepalive, see rpc/liveness.py), and the clock runs
until N tasks are RUNNING again, none on that worker. The worker is then healed and restarted
before the next trial. Prints JSON: p50/p99/max over the trials. Reference from the issue:
swarmkit needs about 20 s; the target is <= 5 s.

All traffic goes through the daemons' unix sockets; lab addresses are never used from here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cli.client import DaemonClient
from cli.lab import Lab, demo
from worker.images.busybox_image import build_busybox_image, write_docker_save

IMAGE = "bench/busybox:latest"
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
TARGET_S = 5.0
SWARMKIT_REFERENCE_S = 20.0


async def call(host: str, method: str, path: str, body: Any = None, **params: Any) -> Any:
    async with DaemonClient(host) as c:
        return (await c.request(method, path, params=params or None, body=body))[1]


async def running_tasks(manager: str) -> list[dict[str, Any]]:
    tasks = await call(manager, "GET", "/tasks", filters={"service": ["victims"], "desired-state": ["running"]})
    return [t for t in tasks if t["Status"]["State"] == "running"]


async def node_ids(manager: str) -> dict[str, str]:
    return {n["Description"]["Hostname"]: n["ID"] for n in await call(manager, "GET", "/nodes")}


async def wait_for(check: Any, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise TimeoutError(f"not reached within {timeout}s")


def trial(lab: Lab, manager: str, replicas: int) -> float:
    ids = asyncio.run(node_ids(manager))
    by_node: dict[str, int] = {}
    for t in asyncio.run(running_tasks(manager)):
        by_node[t["NodeID"]] = by_node.get(t["NodeID"], 0) + 1
    victim = next(name for name in lab.nodes if name.startswith("worker-") and by_node.get(ids[name]))
    started = time.monotonic()
    for other in lab.nodes:          # the host drops off the network first, as a dead host does,
        if other != victim:          # so no FIN or RST of its dying daemon reaches anyone
            lab.partition(victim, other)
    lab.kill(victim)

    async def recovered() -> bool:
        tasks = await running_tasks(manager)
        return len(tasks) == replicas and all(t["NodeID"] != ids[victim] for t in tasks)

    try:
        asyncio.run(wait_for(recovered, 60))
        elapsed = time.monotonic() - started
    finally:
        lab.heal()
        lab.start(victim)

    async def victim_ready() -> bool:
        nodes = await call(manager, "GET", "/nodes")
        return any(n["ID"] == ids[victim] and n["Status"]["State"] == "ready" for n in nodes)

    asyncio.run(wait_for(victim_ready, 60))
    return elapsed


def run(trials: int, replicas: int, workers: int) -> dict[str, Any]:
    lab = Lab(f"fb{os.getpid() % 100000:05d}")
    lab.down()
    try:
        lab.up(managers=1, workers=workers, swarm=True)
        manager = lab.node("manager-1").host
        with tempfile.TemporaryDirectory() as tmp:
            archive = write_docker_save(build_busybox_image(healthcheck={}), Path(tmp) / "bb.tar", [IMAGE]).read_bytes()

        async def load() -> None:
            await asyncio.gather(*(demo.load_image(n.host, archive) for n in lab.nodes.values()))

        asyncio.run(load())
        asyncio.run(call(manager, "POST", "/services/create", {
            "Name": "victims", "Mode": {"Replicated": {"Replicas": replicas}},
            "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": SLEEPER}}}))

        async def all_running() -> bool:
            return len(await running_tasks(manager)) == replicas

        asyncio.run(wait_for(all_running, 60))
        heartbeat = asyncio.run(call(manager, "GET", "/swarm"))["Spec"]["Dispatcher"]["HeartbeatPeriod"] / 1e9
        times = [trial(lab, manager, replicas) for _ in range(trials)]
    finally:
        lab.down()
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "bench": "failover", "settings": {"heartbeat_period_s": heartbeat, "defaults": True},
        "workload": {"replicas": replicas, "hosts": 1 + workers, "trials": trials},
        "seconds_to_tasks_running_elsewhere": {"p50": round(statistics.median(times), 3), "p99": round(p99, 3),
                                               "max": round(ordered[-1], 3), "all": [round(t, 3) for t in times]},
        "target_s": TARGET_S, "reference_swarmkit_s": SWARMKIT_REFERENCE_S,
        "ratio_p99_over_swarmkit": round(p99 / SWARMKIT_REFERENCE_S, 3),
        "meets_target": p99 <= TARGET_S,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if args.trials < 1 or args.replicas < 1 or args.workers < 2:
        ap.error("--trials and --replicas must be >= 1 and --workers >= 2")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces)")
    return run(args.trials, args.replicas, args.workers)


if __name__ == "__main__":
    print(json.dumps(main()))
