"""First-packet latency to a VIP with one service defined against many, at the data-plane level
(bench/mesh_bench.py, issue 12), on both paths a VIP's connection can take.

Namespaces made here, all named `mbv<pid>-*` and deleted by name at the end (as
tests/ingress/support.py does for the data-plane tests): a switch namespace holding a bridge, and
plugged into it a backend (10.0.0.7, a stdlib accept-and-close loop) and
  - two LB namespaces, programmed by the real `IngressDataPlane.set_lb` as a node's LB namespace
    is: `one` (10.0.0.2) holds a single VIP, `many` (10.0.0.3) holds `services` VIPs, reached
    from a client `c` (10.0.0.9) with no table of its own (DNAT and SNAT in the LB namespace);
  - two clients programmed by the real `IngressDataPlane.set_vips` as a task's namespace is
    (table shoal-vip: DNAT in the client's own nat output hook, the SYN goes straight to the
    backend, the path a task's connections take): `cone` (10.0.0.10) with a single VIP, `cmany`
    (10.0.0.11) with `services` VIPs. Their VIPs (10.0.2.1, 10.0.128.0 on) are held by no LB
    namespace, so a connection to them reaches the backend only through the client's table.
Every VIP has the backend in rotation. One client process connects, one connection after the
other, to the VIP of `one`, to one VIP of `many` (from the middle of its list), to the VIP of
`cone`, to one VIP of `cmany` (the middle too) and straight to the backend from `c`: the five
targets interleaved connection by connection (the first one rotated each round), so that
whatever else the machine does falls on all alike. Before each socket is made the process's
(only) thread enters that target's client namespace (setns on an fd held open; a socket stays
in the namespace it was made in), before the clock starts. Each sample is the time a blocking
`connect()` takes: SYN out to SYN-ACK in (the first packet's way through the nat chains and
back through conntrack). Connections are closed with a reset (SO_LINGER 0) so that no
TIME_WAIT piles up. The result keeps the LB namespaces' figures at its top level and has the
task table's under `task_table`, in the same shape (`added_median_us` for `lb_added_median_us`);
`meets_goal` judges the task table, `meets_goal_lb` the LB namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable
from ipaddress import IPv4Address
from typing import Any

from bench.support.netperf import BenchError, quantile
from bench.support.wrk import spawn, stop
from ingress.dataplane import Applied, IngressDataPlane, LbNetwork, TaskVips, VipService

ONE_LB, MANY_LB = IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")
BACKEND, CLIENT = IPv4Address("10.0.0.7"), IPv4Address("10.0.0.9")
TABLE_ONE_CLIENT, TABLE_MANY_CLIENT = IPv4Address("10.0.0.10"), IPv4Address("10.0.0.11")
ONE_VIP, TABLE_ONE_VIP = IPv4Address("10.0.1.1"), IPv4Address("10.0.2.1")
MANY_BASE = IPv4Address("10.0.4.0")             # up to 10.0.43.15 (MAX_SERVICES)
TABLE_MANY_BASE = IPv4Address("10.0.128.0")     # up to 10.0.167.15: no LB namespace holds these
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
import ctypes, json, os, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
targets = json.loads(sys.argv[1])
port, warmup, count = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fds = {path: os.open(path, os.O_RDONLY) for path, _ in targets}
now, reset = time.perf_counter_ns, struct.pack("ii", 1, 0)
out = [[] for _ in targets]
order = list(range(len(targets)))
for i in range(warmup + count):
    k = i % len(order)
    for t in order[k:] + order[:k]:
        path, host = targets[t]
        if libc.setns(fds[path], 0x40000000) != 0:      # CLONE_NEWNET: the socket is made in there
            raise OSError(ctypes.get_errno(), f"setns {path}")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
        s.settimeout(5)
        t0 = now()
        s.connect((host, port))
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
        for suffix, address in (("one", ONE_LB), ("many", MANY_LB), ("b", BACKEND), ("c", CLIENT),
                                ("cone", TABLE_ONE_CLIENT), ("cmany", TABLE_MANY_CLIENT)):
            self.plug(self.ns(suffix), address, switch)

    def close(self) -> list[str]:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        return [n for n in self.made if os.path.exists(f"/run/netns/{n}")]


def many_vips(base: IPv4Address, services: int) -> list[IPv4Address]:
    return [IPv4Address(int(base) + i) for i in range(services)]


def _summary(ns: list[int]) -> dict[str, Any]:
    us = [n / 1000 for n in ns]
    return {"n": len(us), "median_us": round(statistics.median(us), 1), "p90_us": round(quantile(us, 0.9), 1),
            "p99_us": round(quantile(us, 0.99), 1),
            "min_us": round(min(us), 1), "max_us": round(max(us), 1)}


async def _timed(call: Awaitable[Applied]) -> tuple[float, Applied]:
    t0 = time.monotonic()
    applied = await call
    return time.monotonic() - t0, applied


def _design(one: list[int], many: list[int], direct: dict[str, Any],
            programmed: tuple[tuple[float, Applied], tuple[float, Applied]], added: str) -> dict[str, Any]:
    """One design's figures: its one-VIP and many-VIP targets, their ratio, what it adds over
    going straight (under the key `added`), and what programming it took."""
    s_one, s_many = _summary(one), _summary(many)
    (one_s, _), (many_s, applied) = programmed
    return {
        "one_vip": s_one, "many_vips": s_many,
        # p99 is where other load on the machine shows (a preempted client or softirq)
        "ratio_many_over_one": {q: round(s_many[f"{q}_us"] / s_one[f"{q}_us"], 3) for q in ("median", "p90", "p99")},
        added: {k: round(s["median_us"] - direct["median_us"], 1) for k, s in (("one", s_one), ("many", s_many))},
        "program_s": {"one": round(one_s, 3), "many": round(many_s, 3)},
        "program_nft_commands_many": applied.commands,
    }


def _meets(design: dict[str, Any], goal: float) -> bool:
    ratio = design["ratio_many_over_one"]
    return bool(ratio["median"] <= goal and ratio["p99"] <= goal)


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
        vips, table_vips = many_vips(MANY_BASE, services), many_vips(TABLE_MANY_BASE, services)

        def rotation(addresses: list[IPv4Address]) -> tuple[VipService, ...]:
            return tuple(VipService(v, (BACKEND,)) for v in addresses)

        lb = (await _timed(plane.set_lb("one", bed.path("one"), LbNetwork(ONE_LB, "eth0", rotation([ONE_VIP])))),
              await _timed(plane.set_lb("many", bed.path("many"), LbNetwork(MANY_LB, "eth0", rotation(vips)))))
        table = (await _timed(plane.set_vips("cone", bed.path("cone"), TaskVips(rotation([TABLE_ONE_VIP])))),
                 await _timed(plane.set_vips("cmany", bed.path("cmany"), TaskVips(rotation(table_vips)))))
        targets = [(bed.path("c"), str(ONE_VIP)), (bed.path("c"), str(vips[len(vips) // 2])),
                   (bed.path("cone"), str(TABLE_ONE_VIP)), (bed.path("cmany"), str(table_vips[len(table_vips) // 2])),
                   (bed.path("c"), str(BACKEND))]
        client = spawn([sys.executable, "-c", CLIENT_PY, json.dumps(targets), str(PORT), str(WARMUP), str(connects)])
        try:
            out, err = client.communicate(timeout=timeout + connects * 0.08)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the connect loop gave no result after {timeout + connects * 0.08:.0f}s") from None
        finally:
            stop(client)
        if client.returncode != 0:
            raise BenchError(f"the connect loop exited {client.returncode}: {err.strip()[-300:]}")
        lb_one, lb_many, table_one, table_many, straight = json.loads(out)
        direct = _summary(straight)
        lb_part = _design(lb_one, lb_many, direct, lb, "lb_added_median_us")
        table_part = _design(table_one, table_many, direct, table, "added_median_us")
        result = {
            "method": f"TCP connect() time (SYN to SYN-ACK), {connects} connections per target after {WARMUP} "
                      "unmeasured, the 5 targets interleaved connection by connection, each socket made in its "
                      "client's namespace (setns before the clock starts): top level, from client c through LB "
                      "namespaces programmed by IngressDataPlane.set_lb (DNAT + SNAT in the LB namespace); "
                      "task_table, from clients cone and cmany whose own namespaces hold table shoal-vip "
                      "(IngressDataPlane.set_vips: DNAT as the SYN leaves, straight to the backend); straight, "
                      "from c to the backend. Every VIP has the one backend in rotation",
            "services": services,
            **lb_part,
            "straight_to_backend": direct,
            "task_table": table_part,
            "goal": f"{services} VIPs within {round((goal - 1) * 100)}% of 1 (median and p99), judged on the task "
                    "table (the path a task's connections take)",
            "meets_goal": _meets(table_part, goal),
            "meets_goal_lb": _meets(lb_part, goal),
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
