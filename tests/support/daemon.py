"""Start a real `shoal daemon` process for a test, and stop it by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cli.lab.procs import ping
from tests.support.wait import wait_until
from worker.executor.teardown import destroy_executor


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    socket: Path
    log: Path

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def daemon_argv(data_dir: Path, socket: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "daemon", "--data-dir", str(data_dir),
            "--socket", str(socket), *extra]


def start_daemon(root: Path, *extra: str, name: str = "d") -> DaemonProcess:
    data_dir, socket, log = root / f"{name}-data", root / f"{name}.sock", root / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(daemon_argv(data_dir, socket, *extra), stdout=out, stderr=out,
                                start_new_session=True)
    daemon = DaemonProcess(proc, data_dir, socket, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}:\n{daemon.log_text()}")
        return ping(socket)

    wait_until(ready, timeout=20, what="daemon to answer /_ping")
    return daemon


def stop_daemon(daemon: DaemonProcess) -> None:
    """SIGKILL the daemon, then whatever its executor owns (containers, shims, mounts, cgroups)."""
    if daemon.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait(10)
    destroy_executor(daemon.data_dir)


@contextlib.contextmanager
def running_daemon(root: Path, *extra: str, name: str = "d") -> Iterator[DaemonProcess]:
    daemon = start_daemon(root, *extra, name=name)
    try:
        yield daemon
    finally:
        stop_daemon(daemon)
