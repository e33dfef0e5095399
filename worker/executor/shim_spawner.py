"""Start container shims (conmon) already inside the shims cgroup, from a small helper process.

Theory of operation: a shim must not live in the daemon's cgroup (stopping the daemon's
service would take every container's shim with it), and moving each new shim costs one
cgroup attach per hierarchy (about a dozen on cgroup v1, each waiting for the kernel's
threadgroup lock) right on the path from assignment to RUNNING. Instead one helper process is
started per executor and moved once into `<cgroup-parent>/shims`; every shim it spawns is born
there. The helper is this file run as a script (standard library only, `python -I -S`, so it
starts fast and imports nothing of the daemon). It reads one request per SOCK_SEQPACKET
message on its stdin, a socketpair with the daemon: JSON {"argv", "env", "cwd"} with two file
descriptors attached (conmon's sync pipe, and the file for conmon's own output). It
posix_spawns the program with stdin on /dev/null, stdout and stderr on the output file, the
sync pipe as fd 3 (`_OCI_SYNCPIPE=3`), in `cwd` (conmon drops files such as `oom` there), in a
new session, with default signal dispositions, and closes its copies. It never waits for
anything: children are reaped by the kernel (SIGCHLD ignored). If the spawn fails, the helper
writes conmon's failure report (`{"data": -1, "message": ...}`) on the sync pipe itself, so the
daemon has one place to look for the outcome either way. The helper exits when the daemon's end of the socket
closes (daemon exit, crash or `close()`), and takes no container with it: the shims have
double-forked away from it.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

SYNC_FD = 3                   # where the sync pipe is in the spawned program
MAX_REQUEST = 1 << 16
READY = b"ready"
START_TIMEOUT = 30.0


class SpawnerUnavailable(OSError):
    """The helper is not running and could not be (re)started."""


# ---- the daemon's side ----------------------------------------------------------------------

class ShimSpawner:
    """The daemon's handle on the helper. `spawn` never blocks on the helper's work; it is
    safe to call from an event loop thread (one sendmsg of a small message)."""

    def __init__(self, place: Callable[[int], object], log_path: Path) -> None:
        self._place = place          # puts a pid into the shims cgroup
        self._log_path = log_path
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else 0

    def ensure_started(self) -> None:
        """Start the helper unless it runs; blocking (use a thread from an event loop)."""
        with self._lock:
            if self._sock is not None and self._proc is not None and self._proc.poll() is None:
                return
            self._stop_locked()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            log = open(self._log_path, "ab")   # handed to the child, closed below
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                    stdin=theirs.fileno(), stdout=log, stderr=log, start_new_session=True)
            except OSError as e:
                ours.close()
                raise SpawnerUnavailable(f"cannot start the shim spawner: {e}") from e
            finally:
                theirs.close()
                log.close()
            try:
                self._place(proc.pid)          # before it spawns anything
                ours.settimeout(START_TIMEOUT)
                if ours.recv(16) != READY:
                    raise SpawnerUnavailable("the shim spawner exited at start "
                                             f"(see {self._log_path})")
                ours.setblocking(False)
            except BaseException:
                ours.close()
                proc.kill()
                proc.wait()
                raise
            self._proc, self._sock = proc, ours

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str, sync_fd: int,
              output_fd: int) -> None:
        """Hand one program to the helper. Raises SpawnerUnavailable if it is gone (the
        caller restarts it with `ensure_started`) and BlockingIOError if its queue is full."""
        sock = self._sock
        if sock is None:
            raise SpawnerUnavailable("the shim spawner is not running")
        message = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
        if len(message) > MAX_REQUEST:
            raise ValueError(f"shim command line too long ({len(message)} bytes)")
        fds = array.array("i", [sync_fd, output_fd])
        try:
            sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError) as e:
            raise SpawnerUnavailable(f"the shim spawner is gone: {e}") from e

    @property
    def socket_fd(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def close(self) -> None:
        """Stop the helper (shims it started keep running)."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        sock, proc = self._sock, self._proc
        self._sock = self._proc = None
        if sock is not None:
            sock.close()                       # the helper sees EOF and exits
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- the helper process ---------------------------------------------------------------------

_DEFAULT_SIGNALS = (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM)


def _spawn_one(request: bytes, fds: list[int]) -> None:
    sync_fd, out_fd = fds
    try:
        job = json.loads(request)
        argv = [str(a) for a in job["argv"]]
        env = {str(k): str(v) for k, v in job["env"].items()}
        env["_OCI_SYNCPIPE"] = str(SYNC_FD)
        os.chdir(str(job["cwd"]))                  # inherited by the child; one request at a time
        os.posix_spawn(argv[0], argv, env, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_fd, 1),
            (os.POSIX_SPAWN_DUP2, out_fd, 2),
            (os.POSIX_SPAWN_DUP2, sync_fd, SYNC_FD),
        ], setsid=True, setsigdef=_DEFAULT_SIGNALS, setsigmask=())
    except Exception as e:   # reported to the daemon on the sync pipe
        report = json.dumps({"data": -1, "message": f"cannot start the shim: {e}"}) + "\n"
        try:
            os.write(sync_fd, report.encode())
        except OSError:
            pass


def serve(sock: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)     # the kernel reaps the first conmon
    # keep fds 0..3 taken, so a received fd is never the spawned program's SYNC_FD
    placeholder = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    if placeholder != SYNC_FD:
        os.dup2(placeholder, SYNC_FD, inheritable=False)
    sock.sendall(READY)
    fd_space = socket.CMSG_SPACE(2 * array.array("i").itemsize)
    while True:
        data, ancdata, _flags, _ = sock.recvmsg(MAX_REQUEST, fd_space, socket.MSG_CMSG_CLOEXEC)
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
                fds.extend(got)
        if not data and not fds:
            return                                   # the daemon closed its end
        try:
            if len(fds) == 2:
                _spawn_one(data, fds)
            else:
                print(f"shim spawner: request with {len(fds)} fds ignored", file=sys.stderr,
                      flush=True)
        finally:
            for fd in fds:
                os.close(fd)


if __name__ == "__main__":
    serve(socket.socket(fileno=0))
