"""Benchmark: raft.kv (3 processes on loopback, fsync on) side by side with a 3-member etcd cluster.

Prints one JSON document. Phases, each bounded in operations and time:
  - durable writes: C concurrent HTTP clients (C = 1, 16, 64) PUT unique keys at the leader; writes/s
    and p50/p99 latency of acknowledged writes;
  - failover: SIGKILL the leader, then time until the next write is acknowledged through any live
    member (following redirects), over N trials; the killed member is restarted and caught up between
    trials.
etcd runs when the `etcd` binary is installed (deploy/bench-setup.sh), through its v3 JSON gateway
(`POST /v3/kv/put`, base64 key/value), driven by the same client code; the JSON then has the ratios.
Both clusters run at the same time and each write phase alternates between them (`--reps` times,
median reported), so a shift in background load on a shared machine affects both alike.
Usage: python bench/raft_bench.py [--seconds 3] [--reps 3] [--max-ops 30000] [--trials 20] [--no-etcd]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.support.kvcluster import KVClient, KVCluster, free_ports

CONCURRENCY = (1, 16, 64)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 50) * 1e3, 3), "p99_ms": round(pct(values, 99) * 1e3, 3),
            "mean_ms": round(statistics.fmean(values) * 1e3, 3) if values else float("nan"),
            "max_ms": round(max(values) * 1e3, 3) if values else float("nan")}


# -- the systems under test -------------------------------------------------------------------------

class ShoalSystem:
    name = "shoal"

    def __init__(self, root: str, extra_args: list[str]) -> None:
        self.cluster = KVCluster(root, 3, extra_args=extra_args)

    async def start(self) -> None:
        await self.cluster.start_all()

    async def stop(self) -> None:
        await self.cluster.stop_all()

    def kill_now(self) -> None:
        self.cluster.kill_all_now()

    async def leader(self, session: aiohttp.ClientSession) -> int:
        return await KVClient(self.cluster, session).leader(timeout=15)

    def endpoint(self, node: int) -> str:
        return self.cluster.nodes[node].http

    def live(self) -> list[int]:
        return [i for i, n in self.cluster.nodes.items() if n.alive]

    async def put(self, session: aiohttp.ClientSession, base: str, key: str, value: bytes) -> tuple[int, str]:
        """(status, redirect-or-empty) of one write at `base`."""
        async with session.put(f"http://{base}/kv/{key}", data=value, allow_redirects=False) as r:
            await r.read()
            loc = r.headers.get("Location", "")
            return r.status, loc.split("/")[2] if loc else ""

    async def kill(self, node: int) -> None:
        await self.cluster.kill_and_wait(node, signal.SIGKILL)

    async def restart(self, node: int, session: aiohttp.ClientSession) -> None:
        await self.cluster.start(node)
        client = KVClient(self.cluster, session)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            leader = await client.leader(timeout=15)
            a, b = await client.status(node), await client.status(leader)
            if a and b and a["leader"] == leader and a["applied"] >= b["commit"] - 1:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"shoal node {node} did not catch up")


class EtcdSystem:
    name = "etcd"

    def __init__(self, root: str, binary: str) -> None:
        self.root = root
        self.binary = binary
        ports = free_ports(6)
        self.client_ports = {i: ports[2 * i - 2] for i in (1, 2, 3)}
        self.peer_ports = {i: ports[2 * i - 1] for i in (1, 2, 3)}
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.member_ids: dict[str, int] = {}
        self.started_once: set[int] = set()

    def _args(self, i: int) -> list[str]:
        cluster = ",".join(f"e{j}=http://127.0.0.1:{self.peer_ports[j]}" for j in (1, 2, 3))
        return [self.binary, "--name", f"e{i}", "--data-dir", os.path.join(self.root, f"e{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", cluster, "--initial-cluster-token", "shoal-bench",
                "--initial-cluster-state", "new", "--log-level", "error", "--logger", "zap"]

    async def _spawn(self, i: int) -> None:
        log_fd = os.open(os.path.join(self.root, f"e{i}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.procs[i] = await asyncio.create_subprocess_exec(*self._args(i), stdout=log_fd, stderr=log_fd)
        finally:
            os.close(log_fd)

    async def _healthy(self, session: aiohttp.ClientSession, i: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(f"http://127.0.0.1:{self.client_ports[i]}/health",
                                       timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200 and (await r.json(content_type=None)).get("health") == "true":
                        return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"etcd member {i} not healthy")

    async def start(self) -> None:
        for i in (1, 2, 3):
            await self._spawn(i)
        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(self._healthy(s, i) for i in (1, 2, 3)))

    async def stop(self) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()

    def kill_now(self) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()

    async def _status(self, session: aiohttp.ClientSession, i: int) -> dict[str, Any] | None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.post(f"http://127.0.0.1:{self.client_ports[i]}/v3/maintenance/status",
                                    json={}, timeout=aiohttp.ClientTimeout(total=1)) as r:
                if r.status == 200:
                    return await r.json(content_type=None)
        return None

    async def leader(self, session: aiohttp.ClientSession) -> int:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for i in self.live():
                st = await self._status(session, i)
                if st and st.get("leader") and st["leader"] == st["header"]["member_id"]:
                    return i
            await asyncio.sleep(0.02)
        raise TimeoutError("no etcd leader")

    def endpoint(self, node: int) -> str:
        return f"127.0.0.1:{self.client_ports[node]}"

    def live(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.returncode is None]

    async def put(self, session: aiohttp.ClientSession, base: str, key: str, value: bytes) -> tuple[int, str]:
        body = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode()}
        async with session.post(f"http://{base}/v3/kv/put", json=body) as r:
            data = await r.read()
            # The gateway answers 200 with an error object when the write failed.
            return (204 if r.status == 200 and b'"error"' not in data else 503), ""

    async def kill(self, node: int) -> None:
        p = self.procs[node]
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        await p.wait()

    async def restart(self, node: int, session: aiohttp.ClientSession) -> None:
        args = self._args(node)
        args[args.index("new")] = "existing"
        log_fd = os.open(os.path.join(self.root, f"e{node}.log"), os.O_WRONLY | os.O_APPEND)
        try:
            self.procs[node] = await asyncio.create_subprocess_exec(*args, stdout=log_fd, stderr=log_fd)
        finally:
            os.close(log_fd)
        await self._healthy(session, node)
        leader = await self.leader(session)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            a, b = await self._status(session, node), await self._status(session, leader)
            if a and b and a.get("leader") == b["header"]["member_id"] \
                    and int(a.get("raftAppliedIndex", a.get("raftIndex", 0))) >= int(b.get("raftIndex", 0)) - 1:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"etcd member {node} did not catch up")


# -- phases ------------------------------------------------------------------------------------------

async def write_phase(system: Any, clients: int, seconds: float, max_ops: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=clients + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        leader = system.endpoint(await system.leader(session))
        latencies: list[float] = []
        errors = 0
        issued = 0
        value = b"v" * 100
        stop_at = time.monotonic() + seconds

        async def client(c: int) -> None:
            nonlocal errors, issued
            n = 0
            while time.monotonic() < stop_at and issued < max_ops:
                issued += 1
                key = f"bench-{clients}-{c}-{n}"
                n += 1
                t0 = time.perf_counter()
                try:
                    status, _ = await system.put(session, leader, key, value)
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                if status in (200, 204):
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for c in range(clients):
                tg.create_task(client(c))
        elapsed = time.perf_counter() - t0
    return {"clients": clients, "acked": len(latencies), "errors": errors, "seconds": round(elapsed, 3),
            "writes_per_s": round(len(latencies) / elapsed, 1), **summary_ms(latencies)}


async def failover_phase(system: Any, trials: int) -> dict[str, Any]:
    times: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2, connect=0.5)) as session:
        for t in range(trials):
            leader = await system.leader(session)
            # The next write is attempted against the live members, following redirects.
            await system.kill(leader)
            t0 = time.perf_counter()
            ok = False
            attempt = 0
            while not ok and time.perf_counter() - t0 < 30:
                for node in system.live():
                    base = system.endpoint(node)
                    try:
                        status, loc = await system.put(session, base, f"failover-{t}-{attempt}", b"x")
                        attempt += 1
                        if status == 307 and loc:
                            status, loc = await system.put(session, loc, f"failover-{t}-{attempt}", b"x")
                            attempt += 1
                    except (aiohttp.ClientError, TimeoutError):
                        status = 0
                    if status in (200, 204):
                        ok = True
                        break
                if not ok:
                    await asyncio.sleep(0.005)
            times.append(time.perf_counter() - t0)
            await system.restart(leader, session)
    return {"trials": trials, **summary_ms(times)}


async def warm_up(system: Any) -> None:
    async with aiohttp.ClientSession() as s:   # connections, first elections, first fsyncs
        base = system.endpoint(await system.leader(s))
        for i in range(50):
            await system.put(s, base, f"warm-{i}", b"w")


async def run_systems(systems: list[Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """All systems run at once; each write phase alternates between them `--reps` times, so that a
    change in background load hits both alike, and the repetition with the median writes/s counts."""
    out: dict[str, dict[str, Any]] = {s.name: {"writes": {}} for s in systems}
    started: list[Any] = []
    try:
        for system in systems:
            await system.start()
            started.append(system)
            await warm_up(system)
        for c in CONCURRENCY:
            reps: dict[str, list[dict[str, Any]]] = {s.name: [] for s in systems}
            for _ in range(args.reps):
                for system in systems:
                    reps[system.name].append(await write_phase(system, c, args.seconds, args.max_ops))
            for name, runs in reps.items():
                runs.sort(key=lambda r: r["writes_per_s"])
                median = dict(runs[len(runs) // 2])
                median["reps_writes_per_s"] = [r["writes_per_s"] for r in runs]
                out[name]["writes"][str(c)] = median
        if args.trials:
            for system in systems:
                out[system.name]["failover"] = await failover_phase(system, args.trials)
    finally:
        for system in reversed(started):
            try:
                await system.stop()
            finally:
                system.kill_now()
    return out


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": "raft_bench", "fsync": True, "nodes": 3, "value_bytes": 100,
        "env": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
    }
    with tempfile.TemporaryDirectory(prefix="raft-bench-") as root:
        os.makedirs(os.path.join(root, "shoal"))
        systems: list[Any] = [ShoalSystem(os.path.join(root, "shoal"), args.shoal_args.split())]
        etcd = shutil.which("etcd")
        version = None
        if etcd and not args.no_etcd:
            os.makedirs(os.path.join(root, "etcd"))
            proc = await asyncio.create_subprocess_exec(etcd, "--version", stdout=asyncio.subprocess.PIPE)
            version = (await proc.communicate())[0].decode().splitlines()[0]
            systems.append(EtcdSystem(os.path.join(root, "etcd"), etcd))
        measured = await run_systems(systems, args)
        result["shoal"] = measured["shoal"]
        result["shoal"]["args"] = args.shoal_args
        result["etcd"] = measured.get("etcd")
        if result["etcd"] is not None:
            result["etcd"]["version"] = version
    sh, et = result["shoal"], result["etcd"]
    fo = sh["failover"]["p99_ms"] if "failover" in sh else float("nan")
    result["targets"] = {"failover_p99_le_1s": fo <= 1000.0}
    if et:
        result["ratios"] = {
            **{f"writes_per_s_{c}": ratio(sh["writes"][str(c)]["writes_per_s"], et["writes"][str(c)]["writes_per_s"])
               for c in CONCURRENCY},
            **{f"p50_latency_{c}": ratio(sh["writes"][str(c)]["p50_ms"], et["writes"][str(c)]["p50_ms"])
               for c in CONCURRENCY},
            "failover_p99": ratio(fo, et["failover"]["p99_ms"]) if "failover" in et else None,
        }
        result["targets"]["writes_per_s_64_ge_1x_etcd"] = (result["ratios"]["writes_per_s_64"] or 0) >= 1.0
        result["targets"]["p50_latency_1_le_2x_etcd"] = (result["ratios"]["p50_latency_1"] or 99) <= 2.0
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="time bound of each write phase")
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions of each write phase")
    p.add_argument("--max-ops", type=int, default=30000, help="operation bound of each write phase")
    p.add_argument("--trials", type=int, default=20, help="failover trials per system")
    p.add_argument("--no-etcd", action="store_true", help="skip etcd even when installed")
    p.add_argument("--shoal-args", default="", help="extra raft.kv flags, e.g. '--tick-ms 25'")
    args = p.parse_args()
    try:
        import uvloop
        run: Callable[[Awaitable[Any]], Any] = uvloop.run  # type: ignore[assignment]
    except ImportError:
        run = asyncio.run  # type: ignore[assignment]
    print(json.dumps(run(main_async(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
