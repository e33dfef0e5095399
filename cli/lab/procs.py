"""Processes and daemons by PID, for the lab, the test helpers and the benchmarks.

Everything here acts on one given PID (never on a name or a pattern): whether it runs, its
command line, waiting for its exit (on a pidfd, which turns readable when it exits; a child of
ours is reaped), SIGTERM-then-SIGKILL, and whether a daemon answers `GET /_ping` on its socket.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket as socketlib
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie does not; one that is our child is reaped)."""
    if pid <= 0:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` for `pid` to exit; whether it did."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    return not pid_alive(pid)


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM, up to `timeout` for it to exit, then SIGKILL."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 5.0)


def ping(socket_path: str | Path, deadline_s: float = 1.0) -> bool:
    """A blocking `GET /_ping` over a daemon's unix socket: True when it answers 200."""
    try:
        with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as s:
            s.settimeout(deadline_s)
            s.connect(str(socket_path))
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


