"""A real `shoal daemon` in a network namespace of its own that has only loopback, reached over
its unix socket (a path, so it crosses namespaces). Whatever a fuzzed request makes the daemon
do (pull `fromImage` from a registry, run a service whose image names one, join a swarm at any
address), it cannot reach an address outside the namespace: there is no route but `lo`."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import requests
from docker.transport import UnixHTTPAdapter

from cli.lab.procs import ping
from tests.support.daemon import DaemonProcess, daemon_argv, stop_daemon
from tests.support.wait import wait_until

BASE_URL = "http://shoal"


def start_isolated_daemon(root: Path, *extra: str) -> DaemonProcess:
    """`unshare --net` then `exec` twice: the daemon keeps the PID Popen returns, to stop it by."""
    data_dir, socket, log = root / "d-data", root / "d.sock", root / "d.log"
    argv = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
            *daemon_argv(data_dir, socket, *extra)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)
    daemon = DaemonProcess(proc, data_dir, socket, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}:\n{daemon.log_text()}")
        return ping(socket)

    try:
        wait_until(ready, timeout=30, what="the isolated daemon to answer /_ping")
    except BaseException:
        stop_daemon(daemon)
        raise
    return daemon


def interfaces(pid: int) -> list[str]:
    """The network interfaces the process `pid` sees."""
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


def unix_session(daemon: DaemonProcess) -> requests.Session:
    """A requests session whose `http://shoal/...` requests go to the daemon's unix socket."""
    session = requests.Session()
    session.mount(BASE_URL, UnixHTTPAdapter(f"http+unix://{daemon.socket}", timeout=30))
    return session


@contextlib.contextmanager
def isolated_daemon(root: Path, *extra: str) -> Iterator[DaemonProcess]:
    daemon = start_isolated_daemon(root, *extra)
    try:
        yield daemon
    finally:
        stop_daemon(daemon)
