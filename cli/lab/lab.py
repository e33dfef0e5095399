"""A lab: several hosts on one machine, each a network namespace running a real `shoal daemon`.

Theory of operation: a lab is named (default `shoal`); everything it creates carries that name:
namespaces `<name>-hub` and `<name>-<node>`, state under `/run/shoal-lab/<name>` (sockets, the
state file) and `/var/lib/shoal-lab/<name>` (one data dir per host). `down` does not trust the
state file alone: after a crash or a kill -9 it finds leftovers by the lab's name (namespaces,
the processes inside them, mounts below the lab's directories), so it is idempotent and leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cli.lab import net
from cli.lab.procs import cmdline, pid_alive, ping, terminate, wait_gone

RUN_ROOT = Path("/run/shoal-lab")
DATA_ROOT = Path("/var/lib/shoal-lab")
SUBNET_PREFIX = 24
# Addresses come from the benchmarking range 198.18.0.0/15; each lab is isolated in its own hub,
# so every lab can use the same /24.
MANAGER_BASE = "198.18.0.{}"
STOP_TIMEOUT = 15.0
READY_TIMEOUT = 30.0


class LabError(Exception):
    pass


@dataclass
class LabNode:
    name: str
    ns: str
    port: str
    address: str
    data_dir: str
    socket: str
    log: str
    pid: int = 0

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"


class Lab:
    def __init__(self, name: str = "shoal") -> None:
        if not name or len(name) > 10 or not name.replace("-", "").isalnum():
            raise LabError(f"invalid lab name {name!r}: use up to 10 letters, digits or dashes")
        self.name = name
        self.run_dir = RUN_ROOT / name
        self.data_root = DATA_ROOT / name
        self.hub_ns = f"{name}-hub"
        self.nodes: dict[str, LabNode] = {}
        self.demo_running = 0
        self.demo_answer: Any = None      # demo.MeshAnswer once the demo answered through the mesh
        self._load()

    # ---- state ------------------------------------------------------------------------------
    @property
    def _state_file(self) -> Path:
        return self.run_dir / "state.json"

    def _load(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            doc = json.loads(self._state_file.read_text())
            self.nodes = {n["name"]: LabNode(**n) for n in doc["nodes"]}

    def _save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"name": self.name, "nodes": [asdict(n) for n in self.nodes.values()]}))
        tmp.replace(self._state_file)

    def exists(self) -> bool:
        return bool(self.nodes) or self.hub_ns in net.list_namespaces()

    def node(self, name: str) -> LabNode:
        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(self.nodes) or "none"
            raise LabError(f"no node {name!r} in lab {self.name!r} (nodes: {known})") from None

    # ---- up ---------------------------------------------------------------------------------
    def up(self, managers: int = 1, workers: int = 0, swarm: bool = True, demo: bool = False) -> list[LabNode]:
        if managers < 1 or workers < 0 or managers + workers > 80:
            raise LabError("a lab needs 1..80 hosts with at least one manager")
        if self.exists():
            raise LabError(f"lab {self.name!r} is already up; run `shoal lab down` first")
        names = [f"manager-{i}" for i in range(1, managers + 1)]
        names += [f"worker-{i}" for i in range(1, workers + 1)]
        try:
            net.create_hub(self.hub_ns)
            for index, node_name in enumerate(names, start=1):
                node = LabNode(
                    name=node_name,
                    ns=f"{self.name}-{node_name}",
                    port=f"p{index}",
                    address=MANAGER_BASE.format(10 + index),
                    data_dir=str(self.data_root / node_name),
                    socket=str(self.run_dir / f"{node_name}.sock"),
                    log=str(self.run_dir / f"{node_name}.log"),
                )
                net.create_host(self.hub_ns, node.ns, node.port, node.address, SUBNET_PREFIX)
                self.nodes[node_name] = node
                self._save()
            for node in self.nodes.values():
                self._spawn(node)
            self._save()
            for node in self.nodes.values():
                self.wait_ready(node.name)
            if swarm:
                asyncio.run(self._form_swarm())
            if swarm and demo:
                self.demo_running = asyncio.run(self._deploy_demo())
        except BaseException:
            self.down()
            raise
        return list(self.nodes.values())

    async def _deploy_demo(self) -> int:
        from cli.lab import demo

        archive = demo.build_demo_archive(self.run_dir).read_bytes()
        await asyncio.gather(*(demo.load_image(n.host, archive) for n in self.nodes.values()))
        running = await demo.deploy_demo(self.node("manager-1").host, replicas=max(2, len(self.nodes) - 1))
        self.demo_answer = await demo.mesh_answer(self)
        return running

    async def _form_swarm(self) -> None:
        """manager-1 runs init; the other managers join with the manager token, workers with the
        worker token."""
        from cli.client import DaemonClient

        first = self.node("manager-1")
        async with DaemonClient(first.host) as c:
            await c.post("/swarm/init", {"AdvertiseAddr": first.address, "ListenAddr": "0.0.0.0:2377"})
            tokens = (await c.get("/swarm"))["JoinTokens"]
        for node in self.nodes.values():
            if node is first:
                continue
            token = tokens["Manager" if node.name.startswith("manager-") else "Worker"]
            async with DaemonClient(node.host) as c:
                await c.post("/swarm/join", {"AdvertiseAddr": node.address, "ListenAddr": "0.0.0.0:2377",
                                             "RemoteAddrs": [f"{first.address}:2377"], "JoinToken": token})

    def _spawn(self, node: LabNode) -> None:
        Path(node.data_dir).mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({"SHOAL_HOSTNAME": node.name, "PYTHONUNBUFFERED": "1"})
        cmd = [
            *net.enter(node.ns),
            sys.executable, "-m", "cli.main", "daemon",
            "--data-dir", node.data_dir, "--socket", node.socket,
            "--listen-addr", f"{node.address}:2377", "--advertise-addr", f"{node.address}:2377",
            "--log-level", os.environ.get("SHOAL_LAB_LOG_LEVEL", "info"),
        ]
        with open(node.log, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, env=env)
        node.pid = proc.pid

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> None:
        """Poll the node's API until `_ping` answers, or fail with the tail of its log."""
        node = self.node(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(node.pid):
                raise LabError(f"daemon of {name} exited during startup:\n{self.log_tail(name)}")
            if ping(node.socket):
                return
            time.sleep(0.05)
        raise LabError(f"daemon of {name} not ready after {timeout:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.node(name).log).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ---- fault injection ----------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL the node's daemon (what a crash looks like)."""
        node = self.node(name)
        if pid_alive(node.pid):
            os.kill(node.pid, signal.SIGKILL)
            wait_gone(node.pid, 5)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        node = self.node(name)
        terminate(node.pid, timeout)

    def start(self, name: str) -> None:
        node = self.node(name)
        if pid_alive(node.pid):
            raise LabError(f"{name} is already running (pid {node.pid})")
        self._spawn(node)
        self._save()
        self.wait_ready(name)

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def partition(self, a: str, b: str) -> None:
        net.partition(self.hub_ns, self.node(a).port, self.node(b).port)

    def heal(self) -> None:
        net.heal(self.hub_ns)

    def exec_argv(self, name: str, argv: list[str]) -> list[str]:
        node = self.node(name)
        return [*net.enter(node.ns), "env", f"SHOAL_HOST={node.host}",
                f"DOCKER_HOST={node.host}", *argv]

    def exec(self, name: str, argv: list[str], timeout: float = 120.0,
             check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.exec_argv(name, argv), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise LabError(f"{name}: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def status(self, name: str) -> str:
        node = self.node(name)
        if not pid_alive(node.pid):
            return "stopped"
        return "running" if ping(node.socket) else "starting"

    # ---- down -------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything of this lab, whatever state it is in. Idempotent."""
        prefix = f"{self.name}-"
        namespaces = [ns for ns in net.list_namespaces() if ns == self.hub_ns or (
            ns.startswith(prefix) and ns.removeprefix(prefix).split("-")[0] in ("manager", "worker"))]
        pids = {n.pid for n in self.nodes.values() if n.pid and self.name in cmdline(n.pid)}
        for ns in namespaces:
            pids.update(net.namespace_pids(ns))
        pids.discard(os.getpid())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in pids:
            if not wait_gone(pid, STOP_TIMEOUT / 3):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_gone(pid, 5)
        from worker.executor.rootfs import unmount_below
        from worker.executor.teardown import destroy_executor

        if self.data_root.is_dir():
            for data_dir in self.data_root.iterdir():
                destroy_executor(data_dir)
        unmount_below(self.data_root)
        unmount_below(self.run_dir)
        for ns in namespaces:
            net.delete_namespace(ns)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.nodes = {}


def list_labs() -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return sorted(p.name for p in RUN_ROOT.iterdir() if (p / "state.json").exists())
    return []
