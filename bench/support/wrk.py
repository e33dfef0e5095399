"""HTTP load inside network namespaces: the host's nginx as the backend, wrk as the client
(Debian's nginx-light and wrk, installed by deploy/bench-setup.sh; bench/mesh_bench.py measures
the routing mesh and the VIPs with them).

Each nginx runs from the host's binary inside one namespace (`nsenter --net=<path>`, so in the
namespace a task's container runs in), in the foreground (`daemon off`), with its own config,
pid, error log and temp files in a directory of its own: nothing of the packaged nginx (its
config, its service, /var/log/nginx) is used. nginx listens with `reuseport` (a socket per
worker, connections spread by the kernel's hash), so no worker takes most of wrk's keep-alive
connections. Every process started here is tracked and stopped by its PID (`stop_all`); nginx's
master is asked first (SIGTERM, it stops its workers), and the workers it had are killed by PID
only if it did not.

On a machine shared with other work, requests/s follow the CPU share the processes get, and the
scheduler shares the CPUs per thread: a comparison is fair only with as many server workers and
client threads on each side (bench/mesh_bench.py runs one wrk per backend task on every path).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.support.netperf import REALTIME_PRIORITY, BenchError, in_ns, wait_listening

WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
BODY = "ok\n"

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen {port} default_server reuseport backlog=4096;
        default_type text/plain;
        location / {{ return 200 "{body}"; }}
    }}
}}
"""

_procs: list[subprocess.Popen[str]] = []


def spawn(argv: list[str], *, stdout: int | None = subprocess.PIPE,
          stderr: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
    """Start a process (tracked: `stop_all` stops it by PID)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True)
    _procs.append(proc)
    return proc


def _start_time(pid: int) -> str:
    """A process's start time (field 22 of /proc/PID/stat): with its PID, it names one process."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return ""


def _children(pid: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [(int(p), _start_time(int(p))) for p in (task / "children").read_text().split()]
    return out


def stop(proc: subprocess.Popen[str], timeout: float = 5.0) -> None:
    """Stop one process started here, by its PID. If it has to be killed, the children it had
    (nginx's workers) are killed too, by their PIDs (each checked to be the same process)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kids = _children(proc.pid)
            proc.kill()
            proc.wait(timeout)
            for pid, started in kids:
                if started and _start_time(pid) == started:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
    with contextlib.suppress(ValueError):
        _procs.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_procs)):
        with contextlib.suppress(Exception):
            stop(proc)


def launch_prefix(realtime: bool, cpu: int | None) -> list[str]:
    """The argv prefix running a command at SCHED_FIFO and/or on one CPU (both inherited by its
    children), or nothing."""
    return [*(["chrt", "-f", str(REALTIME_PRIORITY)] if realtime else []),
            *(["taskset", "-c", str(cpu)] if cpu is not None else [])]


def start_nginx(netns: str, directory: Path, port: int, workers: int, timeout: float = 10.0,
                realtime: bool = False, cpu: int | None = None) -> subprocess.Popen[str]:
    """nginx answering `BODY` on every path, on 0.0.0.0:`port` of namespace `netns` (its processes
    on CPU `cpu` if given); returns once it listens."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tmp").mkdir(exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, dir=directory, port=port, body=BODY.replace("\n", "\\n")))
    proc = spawn([*launch_prefix(realtime, cpu), *in_ns(netns), NGINX, "-p", str(directory), "-c", str(conf),
                  "-e", str(directory / "error.log")])
    try:
        wait_listening(netns, port, proc, timeout)
    except BenchError as e:
        log = directory / "error.log"
        tail = log.read_text()[-400:] if log.exists() else ""
        stop(proc)
        raise BenchError(f"nginx in {netns}: {e} {tail}".strip()) from None
    return proc


_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s+(\d+) requests in ([\d.]+)(\w+),", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(out: str) -> dict[str, Any]:
    """wrk's summary (with --latency) as numbers."""
    rate, total = _RATE.search(out), _TOTAL.search(out)
    if rate is None or total is None:
        raise BenchError(f"wrk printed no summary: {out.strip()[-300:]}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if (m := _SOCKET.search(out)) is not None:
        errors = dict(zip(errors, map(int, m.groups()), strict=True))
    non2xx = _NON2XX.search(out)
    latency = {f"p{p}_ms": round(float(v) * _UNIT_MS[u], 3) for p, v, u in _PCT.findall(out)}
    return {"requests_s": round(float(rate.group(1)), 1), "requests": int(total.group(1)),
            "socket_errors": errors, "non_2xx": int(non2xx.group(1)) if non2xx else 0, "latency": latency}


def run_wrk(netns: str, url: str, seconds: int, *, threads: int, connections: int, close: bool,
            timeout: float) -> dict[str, Any]:
    """One wrk run from namespace `netns` (keep-alive, or a new connection per request)."""
    return run_wrks(netns, [url], seconds, threads=threads, connections=connections, close=close,
                    timeout=timeout)


def run_wrks(netns: str, urls: list[str], seconds: int, *, threads: int, connections: int, close: bool,
             timeout: float, realtime: bool = False, cpu: int | None = None) -> dict[str, Any]:
    """One wrk process per URL, all at once, from namespace `netns` (on CPU `cpu` if given), each
    with `threads` threads and `connections` connections (keep-alive, or a new connection per
    request): requests/s and counts summed, latency percentiles per process."""
    argv = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", "--timeout", "5s",
            *(["-H", "Connection: close"] if close else [])]
    procs = [spawn([*launch_prefix(realtime, cpu), *in_ns(netns), *argv, url]) for url in urls]
    deadline = time.monotonic() + seconds + timeout
    outs: list[str] = []
    try:
        for url, proc in zip(urls, procs, strict=True):
            try:
                out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"wrk {url}: no result after {seconds + timeout:.0f}s") from None
            if proc.returncode != 0:
                raise BenchError(f"wrk {url} exited {proc.returncode}: {(err or out).strip()[-300:]}")
            outs.append(out)
    finally:
        for proc in procs:
            stop(proc)
    parts = [parse_wrk(out) for out in outs]
    errors = {k: sum(p["socket_errors"][k] for p in parts) for k in parts[0]["socket_errors"]}
    requests = sum(p["requests"] for p in parts)
    failed = sum(errors.values()) + sum(p["non_2xx"] for p in parts)
    return {"requests_s": round(sum(p["requests_s"] for p in parts), 1), "requests": requests,
            "socket_errors": errors, "non_2xx": sum(p["non_2xx"] for p in parts),
            "failed_fraction": round(failed / max(1, requests), 5),
            "latency": parts[0]["latency"] if len(parts) == 1 else [p["latency"] for p in parts]}


def wait_answers(netns: str, url: str, timeout: float) -> None:
    """Until a short wrk run from `netns` gets answers only (the path is programmed everywhere)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = run_wrk(netns, url, 1, threads=1, connections=2, close=True, timeout=10)
            if r["requests"] > 0 and r["failed_fraction"] == 0:
                return
            last = f"{r['requests']} requests, {r['socket_errors']}, {r['non_2xx']} non-2xx"
        except BenchError as e:
            last = str(e)
        time.sleep(0.2)
    raise BenchError(f"{url} from {netns}: no clean answers after {timeout:.0f}s ({last})")
