"""First-packet latency to a VIP with one service defined against many, at the data-plane level
(bench/mesh_bench.py, issue 12).

Namespaces made here, all named `mbv<pid>-*` and deleted by name at the end (as
tests/ingress/support.py does for the data-plane tests): a switch namespace holding a bridge, and
plugged into it a client (10.0.0.9), a backend (10.0.0.7, a stdlib accept-and-close loop) and two
LB namespaces, programmed by the real `IngressDataPlane.set_lb` as a node's LB namespace is:
`one` (10.0.0.2) holds a single VIP, `many` (10.0.0.3) holds `services` VIPs, every one of them
with the backend in rotation. The client connects, one connection after the other, to the VIP
of `one`, to one VIP of `many` (from the middle of its list) and straight to the backend, the
three targets interleaved connection by connection (the first one rotated each round), so that
whatever else the machine does falls on all three alike. Each sample is the time a blocking
`connect()` takes: SYN out to SYN-ACK in (the first packet's way through the LB's nat chains
and back through conntrack). Connections are closed with a reset (SO_LINGER 0) so that no
TIME_WAIT piles up.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address
from typing import Any

from bench.support.netperf import BenchError, quantile
from bench.support.wrk import spawn, stop
from ingress.dataplane import IngressDataPlane, LbNetwork, VipService

ONE_LB, MANY_LB = IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")
BACKEND, CLIENT = IPv4Address("10.0.0.7"), IPv4Address("10.0.0.9")
ONE_VIP = IPv4Address("10.0.1.1")
MANY_BASE = IPv4Address("10.0.4.0")
PORT = 7000
WARMUP = 200
MAX_SERVICES = 10_000

BACKEND_PY = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""

CLIENT_PY = r"""
import json, socket, struct, sys, time
targets = [(h, int(p)) for h, p in json.loads(sys.argv[1])]
warmup, count = int(sys.argv[2]), int(sys.argv[3])
now, reset = time.perf_counter_ns, struct.pack("ii", 1, 0)
out = [[] for _ in targets]
order = list(range(len(targets)))
for i in range(warmup + count):
    k = i % len(order)
    for t in order[k:] + order[:k]:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
        s.settimeout(5)
        t0 = now()
        s.connect(targets[t])
        dt = now() - t0
        s.close()
        if i >= warmup:
            out[t].append(dt)
print(json.dumps(out))
"""


def _sh(*argv: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")


class VipBed:
    """The namespaces of this phase; `close` deletes them by name."""

    def __init__(self) -> None:
        self.base = f"mbv{os.getpid() % 100000:05d}"
        self.made: list[str] = []
        self._ports = 0

    def path(self, suffix: str) -> str:
        return f"/run/netns/{self.base}-{suffix}"

    def ns(self, suffix: str) -> str:
        name = f"{self.base}-{suffix}"
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)   # a crashed run's
        self.made.append(name)
        _sh("ip", "netns", "add", name)
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def plug(self, ns: str, address: IPv4Address, switch: str) -> None:
        self._ports += 1
        port = f"p{self._ports}"
        _sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", switch)
        _sh("ip", "-n", switch, "link", "set", port, "master", "br0", "up")
        _sh("ip", "-n", ns, "address", "add", f"{address}/16", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def build(self) -> None:
        switch = self.ns("sw")
        _sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", switch, "link", "set", "br0", "up")
        for suffix, address in (("one", ONE_LB), ("many", MANY_LB), ("b", BACKEND), ("c", CLIENT)):
            self.plug(self.ns(suffix), address, switch)

    def close(self) -> list[str]:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        return [n for n in self.made if os.path.exists(f"/run/netns/{n}")]


def many_vips(services: int) -> list[IPv4Address]:
    return [IPv4Address(int(MANY_BASE) + i) for i in range(services)]


def _summary(ns: list[int]) -> dict[str, Any]:
    us = [n / 1000 for n in ns]
    return {"n": len(us), "median_us": round(statistics.median(us), 1), "p90_us": round(quantile(us, 0.9), 1),
            "p99_us": round(quantile(us, 0.99), 1),
            "min_us": round(min(us), 1), "max_us": round(max(us), 1)}


async def first_packet(services: int, connects: int, goal: float, timeout: float) -> dict[str, Any]:
    """The phase; see the module comment. `goal`: many / one at most, median and p99."""
    bed = VipBed()
    backend = None
    result: dict[str, Any] = {}
    try:
        bed.build()
        backend = spawn(["nsenter", f"--net={bed.path('b')}", "--", sys.executable, "-c", BACKEND_PY,
                         "0.0.0.0", str(PORT)])
        if backend.stdout is None or backend.stdout.readline().strip() != "ready":
            raise BenchError("the backend did not start")
        plane = IngressDataPlane()     # the daemon's own tables, in namespaces of its own
        t0 = time.monotonic()
        await plane.set_lb("one", bed.path("one"), LbNetwork(ONE_LB, "eth0", (VipService(ONE_VIP, (BACKEND,)),)))
        one_s = time.monotonic() - t0
        vips = many_vips(services)
        t0 = time.monotonic()
        applied = await plane.set_lb("many", bed.path("many"),
                                     LbNetwork(MANY_LB, "eth0", tuple(VipService(v, (BACKEND,)) for v in vips)))
        many_s = time.monotonic() - t0
        measured = vips[len(vips) // 2]
        targets = [(str(ONE_VIP), PORT), (str(measured), PORT), (str(BACKEND), PORT)]
        client = spawn(["nsenter", f"--net={bed.path('c')}", "--", sys.executable, "-c", CLIENT_PY,
                        json.dumps(targets), str(WARMUP), str(connects)])
        try:
            out, err = client.communicate(timeout=timeout + connects * 0.05)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the connect loop gave no result after {timeout + connects * 0.05:.0f}s") from None
        finally:
            stop(client)
        if client.returncode != 0:
            raise BenchError(f"the connect loop exited {client.returncode}: {err.strip()[-300:]}")
        one, many, direct = (_summary(s) for s in json.loads(out))
        ratio_median = many["median_us"] / one["median_us"]
        ratio_p90 = many["p90_us"] / one["p90_us"]
        ratio_p99 = many["p99_us"] / one["p99_us"]
        result = {
            "method": f"TCP connect() time (SYN to SYN-ACK) from a client namespace, {connects} connections per "
                      f"target after {WARMUP} unmeasured, the 3 targets interleaved connection by connection; "
                      "LB namespaces programmed by IngressDataPlane.set_lb, every VIP with one backend",
            "services": services,
            "one_vip": one, "many_vips": many, "straight_to_backend": direct,
            # p99 is where other load on the machine shows (a preempted client or softirq)
            "ratio_many_over_one": {"median": round(ratio_median, 3), "p90": round(ratio_p90, 3),
                                    "p99": round(ratio_p99, 3)},
            "lb_added_median_us": {"one": round(one["median_us"] - direct["median_us"], 1),
                                   "many": round(many["median_us"] - direct["median_us"], 1)},
            "program_s": {"one": round(one_s, 3), "many": round(many_s, 3)},
            "program_nft_commands_many": applied.commands,
            "goal": f"{services} VIPs within {round((goal - 1) * 100)}% of 1 (median and p99)",
            "meets_goal": ratio_median <= goal and ratio_p99 <= goal,
        }
    finally:
        if backend is not None:
            stop(backend)
        left = bed.close()
    if left:
        result["namespaces_left_behind"] = left
    return result


def cleanup_leftovers() -> None:
    """Namespaces of this process's bed, if `first_packet` was cut short before its own cleanup."""
    base = f"mbv{os.getpid() % 100000:05d}-"
    with contextlib.suppress(OSError):
        for name in os.listdir("/run/netns"):
            if name.startswith(base):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
