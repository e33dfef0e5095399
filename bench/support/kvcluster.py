"""Launch and drive real `python -m raft.kv` processes on loopback (used by tests/procs and bench/).

Each node is a child process started with a fixed raft and HTTP port (picked free at cluster
creation, so a killed node restarts on the same addresses). A node is ready when it prints its
`{"event": "ready"}` line; nothing waits by sleeping. Processes are only ever signalled by their own
PID. `KVClient` writes and reads through any member and follows 307 redirects to the leader,
retrying on 503 and on connection errors until its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class KVProc:
    id: int
    raft_port: int
    http_port: int
    data_dir: str
    proc: asyncio.subprocess.Process | None = None
    log_path: str = ""

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def raft(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


@dataclass
class KVCluster:
    root: str
    size: int = 3
    extra_args: list[str] = field(default_factory=list)
    nodes: dict[int, KVProc] = field(default_factory=dict)
    founders: int = 0       # ids 1..founders found the cluster (0 = all); the rest start with --join

    def __post_init__(self) -> None:
        self.founders = self.founders or self.size
        ports = free_ports(2 * self.size)
        for i in range(1, self.size + 1):
            self.nodes[i] = KVProc(i, ports[2 * i - 2], ports[2 * i - 1], os.path.join(self.root, f"n{i}"))

    def peers_flag(self, joining: bool = False) -> str:
        """Founders list the founding members only (they become the initial voters); a joining node
        also lists itself."""
        return ",".join(f"{n.id}={n.raft}/{n.http}" for n in self.nodes.values()
                        if n.id <= self.founders or joining)

    async def start(self, node_id: int, *, join: bool = False, timeout: float = 20.0) -> KVProc:
        n = self.nodes[node_id]
        n.log_path = os.path.join(self.root, f"n{node_id}.log")
        args = [sys.executable, "-m", "raft.kv", "--id", str(n.id), "--raft", n.raft, "--http", n.http,
                "--peers", self.peers_flag(joining=join), "--data-dir", n.data_dir, *self.extra_args]
        if join:
            args.append("--join")
        log_fd = os.open(n.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            n.proc = await asyncio.create_subprocess_exec(*args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                          stderr=log_fd)
        finally:
            os.close(log_fd)
        assert n.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await n.proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"node {node_id} exited before ready; see {n.log_path}")
                    with contextlib.suppress(ValueError):
                        if json.loads(line).get("event") == "ready":
                            return n
        except BaseException:
            self.kill(node_id)
            raise

    async def start_all(self) -> None:
        await asyncio.gather(*(self.start(i) for i in self.nodes))

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        n = self.nodes[node_id]
        if n.proc is not None and n.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(n.proc.pid, sig)

    async def kill_and_wait(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        self.kill(node_id, sig)
        n = self.nodes[node_id]
        if n.proc is not None:
            await n.proc.wait()

    async def stop_all(self) -> None:
        for i in self.nodes:
            self.kill(i, signal.SIGTERM)
        for n in self.nodes.values():
            if n.proc is None:
                continue
            try:
                await asyncio.wait_for(n.proc.wait(), 5)
            except TimeoutError:
                self.kill(n.id, signal.SIGKILL)
                await n.proc.wait()

    def kill_all_now(self) -> None:
        """Synchronous last-resort cleanup (fixture finalizers): SIGKILL every child by PID."""
        for i in self.nodes:
            self.kill(i, signal.SIGKILL)


class KVClient:
    def __init__(self, cluster: KVCluster, session: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.session = session
        self.preferred = next(iter(cluster.nodes))

    def _urls(self) -> list[str]:
        ids = [self.preferred] + [i for i in self.cluster.nodes if i != self.preferred]
        return [self.cluster.nodes[i].http for i in ids]

    async def status(self, node_id: int) -> dict[str, Any] | None:
        try:
            async with self.session.get(f"http://{self.cluster.nodes[node_id].http}/status",
                                        timeout=aiohttp.ClientTimeout(total=2)) as r:
                return await r.json() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def leader(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, n in self.cluster.nodes.items():
                if n.alive:
                    st = await self.status(i)
                    if st and st["role"] == "leader":
                        return i
            await asyncio.sleep(0.02)
        raise TimeoutError("no leader")

    async def request(self, method: str, key: str, body: bytes | None = None,
                      timeout: float = 10.0) -> tuple[int, bytes]:
        """The final (status, body) after redirects and retries; raises TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for base in self._urls():
                url = f"http://{base}/kv/{key}"
                for _ in range(3):      # follow a few redirects
                    try:
                        async with self.session.request(
                                method, url, data=body, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=6, connect=0.5)) as r:
                            if r.status == 307:
                                url = r.headers["Location"]
                                continue
                            data = await r.read()
                            if r.status < 500:
                                self.preferred = next(
                                    (i for i, n in self.cluster.nodes.items() if n.http in url), self.preferred)
                                return r.status, data
                            break
                    except (aiohttp.ClientError, TimeoutError, ConnectionError):
                        break
            await asyncio.sleep(0.01)
        raise TimeoutError(f"{method} {key}: no answer before the deadline")

    async def put(self, key: str, value: bytes, timeout: float = 10.0) -> bool:
        status, _ = await self.request("PUT", key, value, timeout)
        return status == 204

    async def get(self, key: str, timeout: float = 10.0) -> bytes | None:
        status, data = await self.request("GET", key, None, timeout)
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"GET {key}: HTTP {status} {data!r:.200}")
        return data
