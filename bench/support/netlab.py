"""What the network benchmarks (overlay_bench.py, mesh_bench.py) share: a lab with the bench's
busybox image loaded on every host, Engine API calls, one-task-per-replica services of a sleeping
busybox and the wait for them to run, where a task's namespace and overlay address are, signal
handling that lets cleanup run, and the run wrapper that turns a failure into the JSON's
`error`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.support.netperf import BenchError
from cli.client import DaemonClient
from cli.lab import Lab, demo
from cli.lab import net as labnet
from worker.images.busybox_image import build_busybox_image, write_docker_save

IMAGE = "shoal-bench/busybox:latest"
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
POLL_S = 0.05


# -- the lab -----------------------------------------------------------------------------------------

def up_lab(lab: Lab, managers: int, workers: int) -> dict[str, Any]:
    """Bring the lab up (a leftover of the same name is torn down first) with the bench image
    loaded on every host; what the JSON says of it."""
    with uninterrupted():
        lab.down()
    t0 = time.monotonic()
    lab.up(managers=managers, workers=workers, swarm=True)
    info = {"name": lab.name, "hosts": list(lab.nodes), "up_s": round(time.monotonic() - t0, 3)}
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        archive = write_docker_save(build_busybox_image(healthcheck={}), Path(tmp) / "bb.tar", [IMAGE]).read_bytes()

    async def load() -> None:
        await asyncio.gather(*(demo.load_image(n.host, archive) for n in lab.nodes.values()))

    asyncio.run(load())
    return info


async def call(host: str, method: str, path: str, body: Any = None, **params: Any) -> Any:
    async with DaemonClient(host, timeout=30) as c:
        return (await c.request(method, path, params=params or None, body=body))[1]


def service_spec(name: str, bench: str, replicas: int = 1, *, host: str = "", networks: tuple[str, ...] = (),
                 ports: tuple[tuple[int, int], ...] = ()) -> dict[str, Any]:
    """A replicated service of the sleeping busybox, pinned to `host` if given, on `networks`,
    publishing tcp `(published, target)` pairs through the routing mesh."""
    template: dict[str, Any] = {"ContainerSpec": {"Image": IMAGE, "Args": SLEEPER, "StopGracePeriod": 2_000_000_000}}
    if host:
        template["Placement"] = {"Constraints": [f"node.hostname=={host}"]}
    if networks:
        template["Networks"] = [{"Target": n} for n in networks]
    return {"Name": name, "Labels": {"org.shoal.bench": bench}, "TaskTemplate": template,
            "Mode": {"Replicated": {"Replicas": replicas}},
            "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": t, "PublishedPort": p} for p, t in ports]}}


async def running_tasks(manager: str, service: str, count: int, timeout: float) -> list[dict[str, Any]]:
    """`count` running tasks of the service (desired running), by slot."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        tasks = await call(manager, "GET", "/tasks", filters={"service": [service], "desired-state": ["running"]})
        up = [t for t in tasks if t["Status"]["State"] == "running"]
        if len(up) >= count:
            return sorted(up, key=lambda t: t["Slot"])
        seen = ", ".join(f"{t['Status']['State']} {t['Status'].get('Err', '')}".strip() for t in tasks)
        await asyncio.sleep(POLL_S)
    raise BenchError(f"service {service}: not {count} running tasks after {timeout:.0f}s ({seen or 'no task'})")


def sandbox_path(lab: Lab, host: str, task: dict[str, Any]) -> str:
    """The task's network namespace (the one its container runs in) on lab host `host`."""
    path = Path(lab.node(host).data_dir) / "network" / "netns" / f"s-{task['ID']}"
    if not path.exists():
        raise BenchError(f"task {task['ID']} on {host} has no sandbox namespace at {path}")
    return str(path)


def overlay_address(task: dict[str, Any], network_id: str) -> str:
    for attachment in task.get("NetworksAttachments") or []:
        if attachment["Network"]["ID"] == network_id:
            return str(attachment["Addresses"][0]).split("/")[0]
    raise BenchError(f"task {task['ID']} has no address on network {network_id}")


# -- the run -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def receive_on_cpus(cpus: dict[str, int], switch: tuple[str, int] | None = None) -> Iterator[None]:
    """Each named network namespace's receive work on its own CPU, as on separate machines: RPS on
    every receive queue of its wire (eth0) steers what arrives to `cpus[namespace]`. Without it a
    veth delivers in the sender's softirq, so the sending process's CPU pays for both ends'
    network stacks (the VXLAN decap, bridge and veth of the receiving host too). With `switch`
    (the lab's hub namespace, a CPU), what every host sends is switched on that CPU too (RPS on
    each of the hub's ports): a frame then leaves its sender's CPU and reaches its receiver's
    by a cross-CPU interrupt, as it would reach another machine's NIC. Restored after."""
    def rps(ns: str, devices: str, mask: str | None) -> str:
        queues = f"for q in {devices}/queues/rx-*; do "
        argv = ["ip", "netns", "exec", ns, "sh", "-c", queues + (
            f"echo {mask} > $q/rps_cpus; done" if mask is not None else "cat $q/rps_cpus; break; done")]
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout.strip()

    steered = {(ns, "/sys/class/net/eth0"): cpu for ns, cpu in cpus.items()}
    if switch is not None:      # each port of the hub's bridge (brif/<port> links to <port>/brport)
        steered[(switch[0], f"/sys/class/net/{labnet.HUB_BRIDGE}/brif/*/..")] = switch[1]
    before = {key: rps(*key, None) for key in steered}
    try:
        for key, cpu in steered.items():
            rps(*key, format(1 << cpu, "x"))
        yield
    finally:
        for key, mask in before.items():
            rps(*key, mask or "0")


def ipis_taken() -> list[int]:
    """The inter-processor interrupts each CPU has taken so far (/proc/interrupts: function calls,
    which carry RPS's hand-overs, and reschedules): what splitting hosts over CPUs costs the CPUs
    on a VM (each a VM exit on the sender and an interrupt on the receiver), where separate
    machines would pay their NICs instead."""
    taken: list[int] = []
    with open("/proc/interrupts") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in ("CAL:", "RES:"):
                counts = [int(x) for x in fields[1:] if x.isdigit()]
                taken = [a + b for a, b in zip(taken, counts, strict=True)] if taken else counts
    return taken


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run as Ctrl-C does (KeyboardInterrupt), so cleanup runs."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Cleanup that a second Ctrl-C does not cut short."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def run_bench(result: dict[str, Any], body: Callable[[], None], parts: tuple[str, ...]) -> int:
    """Run `body` (which fills `result` and cleans up after itself); a failure or an interrupt
    becomes `result["error"]`. Adds the load average at the end and `meets_goals` when every
    part named has a verdict. Returns the exit status."""
    status = 0
    try:
        with interruptible():
            body()
    except KeyboardInterrupt as e:
        result["error"] = f"interrupted ({e.args[0] if e.args else 'SIGINT'}); everything was cleaned up"
        status = 130
    except Exception as e:  # a failed run is a result; everything is cleaned up already
        result["error"] = f"{type(e).__name__}: {e}"
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    verdicts = [result.get(k) or {} for k in parts]
    if all("meets_goal" in p for p in verdicts):
        result["meets_goals"] = all(p["meets_goal"] for p in verdicts)
    return status
