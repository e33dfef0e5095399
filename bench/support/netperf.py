"""Throughput and round trips between two network namespaces, with the host's iperf3 and a tiny
stdlib request/response loop (bench/overlay_bench.py measures the overlay against the underlay
with them). Every process started here is tracked and stopped by its PID (`stop_all`)."""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import subprocess
import sys
import time
from typing import Any

IPERF3 = shutil.which("iperf3") or "/usr/bin/iperf3"
IPERF_PORT = 5201
RR_PORT = 5202
RR_WARMUP = 200
REALTIME_PRIORITY = 10         # SCHED_FIFO priority of iperf3 with --realtime

# The request/response loop, stdlib only, run by this interpreter inside a namespace.
RR_SERVER = r"""
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(1)
s.settimeout(timeout)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(timeout)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while c.recv(1):
    c.sendall(b"y")
"""
RR_CLIENT = r"""
import json, socket, sys, time
host, port, warmup, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = socket.create_connection((host, port), timeout=10)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
now, send, recv = time.perf_counter_ns, c.sendall, c.recv
out = []
for i in range(warmup + count):
    t0 = now()
    send(b"x")
    if not recv(1):
        raise SystemExit("server closed")
    out.append(now() - t0)
c.close()
print(json.dumps(out[warmup:]))
"""


class BenchError(Exception):
    pass


# -- processes in namespaces -----------------------------------------------------------------------

_children: list[subprocess.Popen[str]] = []


def in_ns(netns: str) -> list[str]:
    """The argv prefix running a command in the network namespace at path `netns` (and nothing
    else of it: the host's binaries and file systems)."""
    return ["nsenter", f"--net={netns}", "--"]


def spawn(argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[str], timeout: float = 5.0) -> None:
    """Stop one process this bench started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(_children):
        with contextlib.suppress(Exception):
            stop(proc)


def run(argv: list[str], timeout: float) -> str:
    proc = spawn(argv)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv[3:6])}…: no result after {timeout:.0f}s") from None
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[3:6])}… exited {proc.returncode}: {(err or out).strip()[-400:]}")
    return out


def stderr_of(proc: subprocess.Popen[str]) -> str:
    return proc.stderr.read()[-400:] if proc.stderr is not None else ""


def wait_listening(netns: str, port: int, server: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"server on port {port} exited {server.returncode}: {stderr_of(server)}")
        ss = subprocess.run([*in_ns(netns), "ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
        if ss.stdout.strip():
            return
        time.sleep(0.02)
    raise BenchError(f"nothing listens on port {port} after {timeout:.0f}s")


def link_stats(netns: str, dev: str = "eth0") -> dict[str, int]:
    out = subprocess.run([*in_ns(netns), "ip", "-j", "-s", "link", "show", dev], capture_output=True,
                         text=True, check=True).stdout
    link = json.loads(out)[0]
    tx = link["stats64"]["tx"]
    return {"mtu": link["mtu"], "tx_bytes": tx["bytes"], "tx_packets": tx["packets"]}


# -- throughput and round trip ---------------------------------------------------------------------

class Path_:
    """One way from the client's namespace to the server's address."""

    def __init__(self, name: str, server_ns: str, server_ip: str, client_ns: str, client_host_ns: str) -> None:
        self.name, self.server_ns, self.server_ip, self.client_ns = name, server_ns, server_ip, client_ns
        self.client_host_ns = client_host_ns     # where the client's host puts packets on the lab's wire


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def iperf(path: Path_, seconds: int, timeout: float, realtime: bool,
          cpus: tuple[int, int] | None = None) -> dict[str, Any]:
    """One iperf3 run; `cpus`: the CPUs the (server, client) processes are pinned to."""
    prio = ["chrt", "-f", str(REALTIME_PRIORITY)] if realtime else []
    server_cpu, client_cpu = (["-A", str(cpus[0])], ["-A", str(cpus[1])]) if cpus else ([], [])
    server = spawn([*prio, *in_ns(path.server_ns), IPERF3, "-s", "-1", "-B", path.server_ip, "-p", str(IPERF_PORT),
                    *server_cpu])
    try:
        wait_listening(path.server_ns, IPERF_PORT, server, 10)
        before = link_stats(path.client_host_ns)
        cpu_before = children_cpu_s()     # from here until the server is reaped, only these two end
        out = run([*prio, *in_ns(path.client_ns), IPERF3, "-c", path.server_ip, "-p", str(IPERF_PORT),
                   "-t", str(seconds), "-O", "1", "-J", "--connect-timeout", "5000", *client_cpu],
                  timeout=seconds + timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        cpu = children_cpu_s() - cpu_before
        after = link_stats(path.client_host_ns)
    finally:
        stop(server)
    doc = json.loads(out)
    if doc.get("error"):
        raise BenchError(f"iperf3 on the {path.name}: {doc['error']}")
    end = doc["end"]
    sender = end["streams"][0]["sender"]
    packets = after["tx_packets"] - before["tx_packets"]
    # The bytes of the whole run, omitted second included, against the CPU time of both processes
    # (user + system, which holds the softirq work done in their context: most of the data path).
    omitted = sum(i["sum"]["bytes"] for i in doc.get("intervals", []) if i["sum"].get("omitted"))
    sent = end["sum_sent"]["bytes"] + omitted
    return {
        "gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3),
        "cpu_s_per_gib": round(cpu / (sent / 2**30), 4) if sent else None,
        "retransmits": end["sum_sent"].get("retransmits"),
        "mean_rtt_us": sender.get("mean_rtt"),   # TCP's smoothed RTT under load (from TCP_INFO)
        # what left the client's host on the lab's wire, per packet: ~64 KB when GSO packets go
        # unsegmented through veths and the VXLAN device, ~1.5 KB if anything segmented them
        "wire_bytes_per_packet": (after["tx_bytes"] - before["tx_bytes"]) // packets if packets else None,
    }


def round_trips(path: Path_, count: int, timeout: float) -> list[float]:
    server = spawn([*in_ns(path.server_ns), sys.executable, "-c", RR_SERVER, path.server_ip, str(RR_PORT),
                    str(timeout)])
    try:
        if server.stdout is None or server.stdout.readline().strip() != "ready":
            raise BenchError(f"round-trip server on the {path.name} did not start: {stderr_of(server)}")
        out = run([*in_ns(path.client_ns), sys.executable, "-c", RR_CLIENT, path.server_ip, str(RR_PORT),
                   str(RR_WARMUP), str(count)], timeout=timeout)
    finally:
        stop(server)
    return [ns / 1000 for ns in json.loads(out)]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


