"""runc and conmon invocations: the only place that runs the OCI runtime and the shim.

Theory of operation: every runc call passes this daemon's own `--root` state dir, so several
daemons on one machine never see each other's containers. A container is created by launching
conmon, which runs `runc create`, reports the container pid (or runc's error) on a sync pipe,
and double-forks away from us into its own session: conmon is the container's parent, keeps its
stdio, writes the k8s-file log and, with `--api-version 1`, the exit code to
`<exit-dir>/<cid>`. It outlives the daemon. conmon is started by a helper process that lives in
the shims cgroup (`shim_spawner`), so it is born outside the daemon's cgroup. The caller then
starts the container (`Runc.start`: the exec-fifo handshake `runc start` performs). The exit
dir is kept apart from the attach socket dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.executor.shim_spawner import ShimSpawner, SpawnerUnavailable

log = logging.getLogger("shoal.executor.runtime")

CREATE_TIMEOUT = 30.0
RUNC_TIMEOUT = 30.0
EXEC_FIFO = "exec.fifo"        # in runc's state dir while a container is created, not started


class RuntimeFailure(RuntimeError):
    """runc or conmon failed; the message carries their error text."""


def _binary(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
    if path is None:
        raise RuntimeFailure(f"{name} is not installed (looked in PATH, /usr/sbin, /usr/bin)")
    return path


class Runc:
    def __init__(self, root: Path, binary: str | None = None, *, shortcuts: bool = True) -> None:
        """With `shortcuts`, start, kill and delete skip the runc process when runc's state dir
        is in the expected shape (see each method); without, every call runs runc."""
        self.root = root
        self.binary = binary or _binary("runc")
        self.shortcuts = shortcuts

    def _cmd(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    async def _run(self, *args: str, timeout: float = RUNC_TIMEOUT) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *self._cmd(*args), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeFailure(f"runc {args[0]} timed out after {timeout:.0f}s") from None
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    @staticmethod
    def _error_text(stderr: str) -> str:
        msgs = []
        for line in stderr.splitlines():
            if 'msg="' in line:
                msgs.append(line.split('msg="', 1)[1].rsplit('"', 1)[0])
            elif line.strip():
                msgs.append(line.strip())
        return "; ".join(msgs) or "no error output"

    async def state(self, cid: str) -> dict[str, Any] | None:
        """runc's state of `cid` ({"id", "status": created/running/stopped, "pid"}), None if
        unknown. Read from runc's state dir the way runc itself decides (init pid alive with
        the recorded start time; exec fifo present = created), because a `runc state` process
        per query costs tens of milliseconds of CPU; anything unexpected falls back to it."""
        quick = self._quick_state(cid)
        if quick is not None:
            return quick if quick["status"] != "absent" else None
        rc, out, err = await self._run("state", cid)
        if rc != 0:
            if "does not exist" in err or "not exist" in err:
                return None
            raise RuntimeFailure(f"runc state {cid}: {self._error_text(err)}")
        state: dict[str, Any] = json.loads(out)
        return state

    def _quick_state(self, cid: str) -> dict[str, Any] | None:
        """The state from files, {"status": "absent"} if runc has no such container, or None
        when the files are not in the expected shape."""
        if "/" in cid or cid in ("", ".", ".."):
            return None
        state_dir = self.root / cid
        try:
            data = json.loads((state_dir / "state.json").read_text())
            pid = int(data["init_process_pid"])
            start = str(data["init_process_start"])
        except FileNotFoundError:
            return None if state_dir.exists() else {"status": "absent"}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        status = "stopped"
        if pid > 0 and _process_start_time(pid) == start:
            status = "created" if (state_dir / EXEC_FIFO).exists() else "running"
        if status == "stopped":
            return {"id": cid, "status": status, "pid": 0}
        return {"id": cid, "status": status, "pid": pid, "start": start}

    async def list_containers(self) -> list[dict[str, Any]]:
        rc, out, err = await self._run("list", "--format", "json")
        if rc != 0:
            raise RuntimeFailure(f"runc list: {self._error_text(err)}")
        return json.loads(out) if out.strip() and out.strip() != "null" else []

    async def start(self, cid: str) -> None:
        """Let a created container exec its process; returns once it has.

        This is what `runc start` does, done here without a runc process (tens of milliseconds
        of CPU each): the container's init blocks opening runc's exec fifo for writing until a
        reader appears, writes one byte and execs the user's program (its end of the fifo is
        close-on-exec, so the reader sees EOF once the exec happened). Removing the fifo is
        what turns runc's state from created to running. When the state dir is not in that
        shape, `runc start` itself is run."""
        quick = self._quick_state(cid)
        if quick is None or quick["status"] != "created" or not self.shortcuts:
            rc, _, err = await self._run("start", cid)
            if rc != 0:
                raise RuntimeFailure(f"runc start {cid}: {self._error_text(err)}")
            return
        fifo = self.root / cid / EXEC_FIFO
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return               # started meanwhile by someone else
        try:
            async with asyncio.timeout(RUNC_TIMEOUT):
                data = await _read_fifo_until_exec(fd, int(quick["pid"]))
        except TimeoutError:
            raise RuntimeFailure(f"start {cid}: the container did not exec within "
                                 f"{RUNC_TIMEOUT:.0f}s") from None
        finally:
            os.close(fd)
        if not data:
            raise RuntimeFailure(f"start {cid}: the container process is already dead")
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()

    async def kill(self, cid: str, sig: int, *, all_processes: bool = False) -> bool:
        """Signal the container; False if it is not running (nothing to signal).

        What `runc kill` does, without a runc process: the signal goes to the container's init
        through a pidfd, opened and then checked against the start time runc recorded, so a
        recycled pid is never signalled. Every container has its own pid namespace, so SIGKILL
        to its init ends all of its processes (`all_processes`); other signals to all
        processes, or a state dir not in the expected shape, go through `runc kill`."""
        quick = self._quick_state(cid) if self.shortcuts else None
        if quick is not None and (not all_processes or sig == signal.SIGKILL):
            if quick["status"] not in ("created", "running"):
                return False
            return _signal_process(int(quick["pid"]), str(quick["start"]), sig)
        args = ["kill", *(["--all"] if all_processes else []), cid, str(sig)]
        rc, _, err = await self._run(*args)
        if rc != 0:
            text = self._error_text(err)
            if "not running" in text or "does not exist" in text or "process already finished" in text:
                return False
            raise RuntimeFailure(f"runc kill {cid} {sig}: {text}")
        return True

    async def delete(self, cid: str, *, force: bool = True) -> None:
        """Forget the container. One whose init is gone only has its state dir left, which is
        removed here directly (its cgroup directories are the caller's: `runc delete` would
        remove them too); anything else goes through `runc delete`."""
        quick = self._quick_state(cid) if self.shortcuts else None
        if quick is not None and quick["status"] == "absent":
            return
        if quick is not None and quick["status"] == "stopped":
            await asyncio.to_thread(shutil.rmtree, self.root / cid, True)
            return
        rc, _, err = await self._run("delete", *(["--force"] if force else []), cid)
        if rc != 0 and "does not exist" not in err:
            raise RuntimeFailure(f"runc delete {cid}: {self._error_text(err)}")

    async def exec(self, cid: str, argv: list[str], timeout: float) -> tuple[int, str]:
        """Run argv inside the container; (exit code, combined output). On timeout the process
        is signalled (runc forwards SIGTERM, then SIGKILL to runc) and TimeoutError raised."""
        proc = await asyncio.create_subprocess_exec(
            *self._cmd("exec", cid, *argv), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            async with asyncio.timeout(timeout):
                out, _ = await proc.communicate()
        except (TimeoutError, asyncio.CancelledError):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(1.0):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            raise
        return proc.returncode or 0, out.decode(errors="replace")


@dataclass(frozen=True)
class ShimPaths:
    """Where conmon keeps what it owns for one container."""

    bundle: Path
    log: Path
    container_pidfile: Path
    conmon_pidfile: Path
    exit_dir: Path
    socket_dir: Path
    shim_output: Path          # conmon's own stdout/stderr


class Conmon:
    """Launches conmon. With `shim_cgroup` (a callable putting a pid into the shims cgroup),
    conmon is started by a `ShimSpawner` helper that sits in that cgroup, so each shim is
    born there; if the helper cannot run, conmon is started directly and moved after."""

    def __init__(self, runc: Runc, binary: str | None = None, *,
                 shim_cgroup: Callable[[int], object] | None = None,
                 spawner_log: Path | None = None) -> None:
        self.runc = runc
        self.binary = binary or _binary("conmon")
        self.shim_cgroup = shim_cgroup
        self.spawner = (ShimSpawner(shim_cgroup, spawner_log or runc.root / "shim-spawner.log")
                        if shim_cgroup is not None else None)

    async def start_spawner(self) -> None:
        """Start the spawner helper now rather than on the first create (no-op without one)."""
        if self.spawner is not None and not self.spawner.pid:
            try:
                await asyncio.to_thread(self.spawner.ensure_started)
            except SpawnerUnavailable as e:
                log.warning("%s; shims will be started directly", e)

    def close(self) -> None:
        """Stop the spawner helper; running shims are not affected."""
        if self.spawner is not None:
            self.spawner.close()

    async def create(self, cid: str, name: str, paths: ShimPaths, *, terminal: bool = False,
                     stdin: bool = False, leave_stdin_open: bool = False) -> int:
        """Launch conmon, which runs `runc create`; the container pid once created. conmon
        runs in the bundle's parent dir (the container's own dir: it drops an `oom` file in its
        working dir). The conmon pid file exists when this returns. With `terminal`, conmon
        holds the master of the container's pty; with `stdin`, a pipe to its stdin fed from
        the attach socket (`<socket-dir>/<cid>/attach`), closed when an attached client closes
        (unless `leave_stdin_open`: a terminal outlives a detached client, as with dockerd)."""
        for d in (paths.exit_dir, paths.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary, "--api-version", "1", "-c", cid, "-u", cid, "-n", name or cid,
            "-r", self.runc.binary, "-b", str(paths.bundle),
            "-p", str(paths.container_pidfile), "-P", str(paths.conmon_pidfile),
            "-l", f"k8s-file:{paths.log}", "--exit-dir", str(paths.exit_dir),
            "--socket-dir-path", str(paths.socket_dir),
            "--runtime-arg", "--root", "--runtime-arg", str(self.runc.root),
            "--log-level", "info",
            *(["--terminal"] if terminal else []), *(["--stdin"] if stdin else []),
            *(["--leave-stdin-open"] if stdin and leave_stdin_open else []),
        ]
        read_fd, write_fd = os.pipe()
        try:
            shim_out = os.open(paths.shim_output,
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            try:
                await self._launch(argv, str(paths.bundle.parent), write_fd, shim_out)
            finally:
                os.close(shim_out)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        try:
            async with asyncio.timeout(CREATE_TIMEOUT):
                line = await _read_line(read_fd)
                pid = _reported_pid(cid, line, paths.shim_output)
                await _until_exists(paths.conmon_pidfile)
        except TimeoutError:
            raise RuntimeFailure(f"conmon did not report on {cid} within {CREATE_TIMEOUT:.0f}s") \
                from None
        finally:
            os.close(read_fd)
        return pid

    async def _launch(self, argv: list[str], cwd: str, sync_fd: int, output_fd: int) -> None:
        """Start conmon: through the spawner when there is one (restarted once if it died),
        else directly. Returns once it is on its way; the sync pipe tells the outcome."""
        spawner = self.spawner
        if spawner is not None:
            for attempt in (1, 2):
                try:
                    if not spawner.pid:
                        await asyncio.to_thread(spawner.ensure_started)
                    await _send_when_writable(spawner, argv, dict(os.environ), cwd, sync_fd,
                                              output_fd)
                    return
                except SpawnerUnavailable as e:
                    if attempt == 2:
                        log.warning("%s; starting conmon directly", e)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=output_fd, stderr=output_fd,
            pass_fds=(sync_fd,), env=dict(os.environ, _OCI_SYNCPIPE=str(sync_fd)), cwd=cwd,
            start_new_session=True)
        await proc.wait()          # the first conmon exits once it has written the pid file
        place = self.shim_cgroup
        if place is not None:
            pidfile = argv[argv.index("-P") + 1]
            with contextlib.suppress(OSError, ValueError):
                await asyncio.to_thread(lambda: place(int(_read_text(pidfile))))


def _reported_pid(cid: str, line: str, shim_output: Path) -> int:
    """The container pid from conmon's sync-pipe report; RuntimeFailure with its error."""
    if not line:
        raise RuntimeFailure(f"conmon for {cid} exited without reporting: {_tail(shim_output)}")
    try:
        report = json.loads(line)
    except ValueError:
        raise RuntimeFailure(f"conmon for {cid} reported {line!r}") from None
    pid = int(report.get("data", report.get("pid", -1)))
    if pid <= 0:
        message = report.get("message") or _tail(shim_output)
        raise RuntimeFailure(f"runc create {cid} failed: {message.strip()}")
    return pid


async def _send_when_writable(spawner: ShimSpawner, argv: list[str], env: dict[str, str],
                              cwd: str, sync_fd: int, output_fd: int) -> None:
    while True:
        try:
            spawner.spawn(argv, env, cwd, sync_fd, output_fd)
            return
        except BlockingIOError:     # the helper's queue is full: wait until it drains
            writable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fd = spawner.socket_fd
            if fd < 0:
                raise SpawnerUnavailable("the shim spawner is not running") from None
            loop = asyncio.get_running_loop()
            loop.add_writer(fd, _set_once, writable)
            try:
                await writable
            finally:
                loop.remove_writer(fd)


async def _until_exists(path: Path, interval: float = 0.002) -> None:
    """Poll for a file another process writes atomically (the caller bounds the wait with a
    timeout). Only reached in the rare case where the second conmon reported before the
    first one wrote the pid file."""
    for _ in range(int(CREATE_TIMEOUT / interval) + 1):
        if _exists(path):
            return
        await asyncio.sleep(interval)
    raise TimeoutError(f"{path} did not appear")


def _exists(path: Path) -> bool:
    return path.exists()


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _read_line(fd: int) -> str:
    """One line from a pipe without blocking the loop; "" if the writer closed it first."""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    buf = b""
    while not buf.endswith(b"\n"):
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _set_once, readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


async def _read_fifo_until_exec(fd: int, init_pid: int) -> bytes:
    """Read runc's exec fifo (opened non-blocking) until its writer, the container's init,
    closes it by exec'ing; what it wrote. b"" means the init died without writing (a reader
    of a fifo is not woken before some writer has connected, so every wake-up here is the
    init writing, closing, or exiting)."""
    try:
        pidfd = os.pidfd_open(init_pid)
    except ProcessLookupError:
        pidfd = -1
    loop = asyncio.get_running_loop()
    data = b""
    try:
        while True:
            if pidfd >= 0:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, _set_once, ready)
                loop.add_reader(pidfd, _set_once, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
                    loop.remove_reader(pidfd)
            try:
                chunk = os.read(fd, 64)
            except BlockingIOError:      # connected, not written yet
                if pidfd < 0 or _readable_now(pidfd):
                    return data          # and the init is gone: nothing more will come
                continue
            if not chunk:
                return data
            data += chunk
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _readable_now(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _tail(path: Path, limit: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip() or "no output"
    except OSError:
        return "no output"


def _signal_process(pid: int, start_time: str, sig: int) -> bool:
    """Send `sig` to `pid` if it is still the process that started at `start_time`; False if
    that process is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if _process_start_time(pid) != start_time:   # the pid now names another process
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def _process_start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks); "" if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def pid_alive(pid: int, expect_in_cmdline: str = "") -> bool:
    """True if `pid` runs and (when given) its command line contains `expect_in_cmdline`."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return expect_in_cmdline.encode() in cmdline if expect_in_cmdline else True
