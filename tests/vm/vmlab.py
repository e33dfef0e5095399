"""Driving the Vagrant lab (deploy/vagrant/lab.sh) from a test: ssh into its VMs, the Engine API of
a VM's daemon through curl on its unix socket, libvirt, and the host's memory while it runs.

Each ssh goes through one master connection per VM (ControlMaster): a fresh ssh into a TCG guest
costs seconds. The masters are closed by `close()`, before the lab goes down.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
LAB_SH = REPO / "deploy" / "vagrant" / "lab.sh"
BUILD_BOX = REPO / "deploy" / "vagrant" / "build-box.sh"
STATE = Path("/run/shoal-vagrant")
DOMAIN_PREFIX = "shoal-vagrant-"
NETWORKS = ("shoal-vagrant-mgmt", "shoal-vagrant-swarm")
SOCKET = "/run/shoal/shoal.sock"

T = TypeVar("T")


class VmLabError(AssertionError):
    pass


def run(cmd: list[str], *, timeout: float = 60, input_: bytes | None = None, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(cmd, input=input_, capture_output=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise VmLabError(f"{shlex.join(cmd)} exited {proc.returncode}:\n"
                         f"{proc.stdout.decode(errors='replace')[-2000:]}\n{proc.stderr.decode(errors='replace')[-2000:]}")
    return proc


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 2.0) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` and the last error."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except (VmLabError, subprocess.TimeoutExpired, ValueError, KeyError) as e:
            last = e
        if time.monotonic() > deadline:
            raise VmLabError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
        time.sleep(interval)


@dataclass
class MemorySampler:
    """Peak host memory in use (MemTotal - MemAvailable) and peak RSS of the lab's qemu processes."""

    interval: float = 1.0
    baseline_mb: float = 0.0
    peak_mb: float = 0.0
    peak_qemu_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def used_mb() -> float:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0])
        return (info["MemTotal"] - info["MemAvailable"]) / 1024

    @staticmethod
    def qemu_rss_mb() -> float:
        total = 0
        for pidfile in Path("/run/libvirt/qemu").glob(f"{DOMAIN_PREFIX}*.pid"):
            try:
                status = Path(f"/proc/{pidfile.read_text().strip()}/status").read_text()
            except (OSError, ValueError):
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def start(self) -> None:
        self.baseline_mb = self.peak_mb = self.used_mb()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.used_mb())
            self.peak_qemu_mb = max(self.peak_qemu_mb, self.qemu_rss_mb())

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


class VmLab:
    """The lab as lab.sh left it up: its ssh_config and, here, its network namespace."""

    def __init__(self) -> None:
        self.ssh_config = STATE / "ssh_config"
        self.netns = (STATE / "netns").read_text().strip() if (STATE / "netns").exists() else ""
        self.control_dir = STATE / "ssh-control"
        self.control_dir.mkdir(exist_ok=True)

    def _ns(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def _ssh(self, node: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%n",
                "-o", "ControlPersist=600", node]

    def ssh(self, node: str, command: str, *, timeout: float = 60, input_: bytes | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return run(self._ns([*self._ssh(node), command]), timeout=timeout, input_=input_, check=check)

    def host(self, cmd: list[str], *, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """A command on the host, beside the VMs (in the lab's namespace)."""
        return run(self._ns(cmd), timeout=timeout, check=check)

    def api(self, node: str, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """The Engine API of `node`'s daemon; JSON in and out (raw text for non-JSON answers)."""
        url = f"http://shoal{path}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v if isinstance(v, str) else json.dumps(v)
                                                 for k, v in query.items()})
        cmd = (f"sudo curl -sS --unix-socket {SOCKET} -X {method} -H 'Content-Type: application/json' "
               f"-w '\\n%{{http_code}}' {shlex.quote(url)}")
        data = None
        if body is not None:
            cmd += " --data-binary @-"
            data = json.dumps(body).encode()
        out = self.ssh(node, cmd, input_=data).stdout.decode(errors="replace")
        text, _, code = out.rpartition("\n")
        if not code.startswith("2"):
            raise VmLabError(f"{method} {path} on {node}: HTTP {code}: {text[:500]}")
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return text

    def close(self) -> None:
        for sock in self.control_dir.glob("*"):
            subprocess.run(self._ns(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"]),
                           capture_output=True, timeout=10, check=False)


def libvirt_leftovers() -> list[str]:
    """What of the lab is still there: domains, networks, daemons, the namespace."""
    found = []
    virsh = ["virsh", "-c", "qemu:///system"]
    if run([*virsh, "version"], check=False).returncode == 0:
        doms = run([*virsh, "list", "--all", "--name"], check=False).stdout.decode().split()
        found += [f"domain {d}" for d in doms if d.startswith(DOMAIN_PREFIX)]
        nets = run([*virsh, "net-list", "--all", "--name"], check=False).stdout.decode().split()
        found += [f"network {n}" for n in nets if n in NETWORKS]
    for name in ("libvirtd", "virtlogd"):
        pidfile = STATE / f"{name}.pid"
        if pidfile.exists():
            found.append(f"{name} pidfile {pidfile}")
    namespaces = run(["ip", "netns", "list"], check=False).stdout.decode()
    found += [f"netns {line.split()[0]}" for line in namespaces.splitlines() if line.startswith("shoal-vagrant")]
    for pidfile in [*Path("/run/libvirt/qemu").glob(f"{DOMAIN_PREFIX}*.pid"),
                    *Path("/run/libvirt/network").glob("shoal-vagrant-*.pid")]:
        found.append(f"pidfile {pidfile}")
    return found
