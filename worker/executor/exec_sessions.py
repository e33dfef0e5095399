"""`docker exec` processes: one `runc exec` each, attached to a hijacked connection or detached.

Theory of operation: an `ExecInstance` is what `POST /containers/{id}/exec` creates (dockerd's
exec config); `start` runs it once, through `runc exec` in its own session. Its exit code (128+N
when a signal N ended it) is recorded before the connection closes: the docker CLI asks
`GET /exec/{id}/json` for the code as soon as its stream ends.
  - Without a TTY, runc runs in the foreground, a child of the daemon: it forwards signals to
    the process and exits with its code.
    Stdin/stdout/stderr are pipes; output goes out in the multiplexed frames of
    engineapi.logframes; the client's half-close closes the process's stdin.
  - With a TTY, `runc exec --tty --detach --console-socket` sends the master of the
    container's pty to the daemon (SCM_RIGHTS), which relays it to and from the connection
    unframed: one terminal, so ONLCR turns "\n" into "\r\n" once (a pty of the daemon's
    between runc and the client translated output again until runc cleared ONLCR: "\r\r\n").
    runc exits once the process runs; `exec_reaper`, the subreaper runc runs under, inherits
    the process and exits with its code. A resize sets the master's window size (the kernel
    sends SIGWINCH).
    The client's half-close sends an end-of-file (^D). The input is scanned for the detach keys
    (`detach_keys`, ctrl-p,ctrl-q by default, as dockerd, TTY only): on them the client is let go
    (`detached` is set, output goes nowhere from then on) and the process runs on, unattended.
  - A process runc could not start (missing command, not executable) ends runc with 255 before
    runc wrote the pid file; that is recorded as 126, as dockerd records any exec start failure,
    and runc's message (its log goes to a file, so stderr gets the plain text) reaches the client
    (with a TTY: read from the helper's stderr, sent after the pty's output).
`ExecRegistry` holds the instances (the finished ones until they are pruned, oldest first past
`KEEP_FINISHED`) and owns the tasks of detached ones; `close()` cancels them (the processes get
SIGKILL). An attached instance is run by its request handler.
When the executor records a container's exit, `container_exited` ends its started instances at
once, as dockerd does on a container's exit: `Running` false (an inspect right after `wait`
returns sees it), `ExitCode` its runc's code if that has already ended, else filled in when the
session ends (the kernel kills every process of the container's PID namespace with its PID 1:
the session's end is a moment away). The session ending later keeps `Running` false and a code
already recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import signal
import socket
import struct
import sys
import tempfile
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aio import cancel_and_wait
from engineapi.logframes import STDERR, STDOUT, frame
from worker.executor import detach_keys, exec_reaper
from worker.executor.controller import ContainerController
from worker.executor.spec import ConfigError, resolve_user

KEEP_FINISHED = 256
RUNC_FAILED = 255        # runc's own exit code when it fails (here: to start the process)
CANNOT_START = 126       # dockerd's ExitCode for an exec that could not start
READ_CHUNK = 32 * 1024
EOT = b"\x04"

Write = Callable[[bytes], Awaitable[None]]
Read = Callable[[], Awaitable[bytes]]


class ExecError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ExecConfig:
    cmd: list[str]
    env: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = ""
    tty: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = True
    attach_stderr: bool = True
    privileged: bool = False
    detach_keys: str = ""
    console_size: tuple[int, int] | None = None

    @classmethod
    def from_api(cls, body: Any) -> ExecConfig:
        """The body of `POST /containers/{id}/exec`; ExecError 400 for what dockerd refuses."""
        if not isinstance(body, dict):
            raise ExecError(400, "exec config must be a JSON object")
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd or not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd):
            raise ExecError(400, "No exec command specified")
        env = body.get("Env") or []
        if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
            raise ExecError(400, "Env must be a list of strings")
        for entry in env:
            if "=" not in entry or entry.startswith("="):
                raise ExecError(400, f"invalid environment variable: {entry}")
        keys = body.get("DetachKeys") or ""
        if not isinstance(keys, str):
            raise ExecError(400, "DetachKeys must be a string")
        if keys:
            try:
                detach_keys.parse(keys)
            except ValueError:
                raise ExecError(400, f"Invalid escape keys ({keys}) provided") from None
        workdir = body.get("WorkingDir") or ""
        if not isinstance(workdir, str) or (workdir and not workdir.startswith("/")):
            raise ExecError(400, f"the working directory '{workdir}' is invalid, it needs to be an absolute path")
        size = body.get("ConsoleSize")
        console = None
        if size is not None:
            if (not isinstance(size, list) or len(size) != 2
                    or not all(isinstance(n, int) and n >= 0 for n in size)):
                raise ExecError(400, "ConsoleSize must be [height, width]")
            console = (size[0], size[1]) if size[0] and size[1] else None
        return cls(cmd=list(cmd), env=list(env), user=str(body.get("User") or ""), workdir=workdir,
                   tty=bool(body.get("Tty")), attach_stdin=bool(body.get("AttachStdin")),
                   attach_stdout=bool(body.get("AttachStdout")),
                   attach_stderr=bool(body.get("AttachStderr")),
                   privileged=bool(body.get("Privileged")),
                   detach_keys=keys, console_size=console)


def set_window(fd: int, height: int, width: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


class ExecInstance:
    def __init__(self, ctl: ContainerController, config: ExecConfig) -> None:
        self.id = secrets.token_hex(32)
        self.ctl = ctl
        self.container_id = ctl.id
        self.config = config
        self.started = False
        self.running = False
        self.container_ended = False          # the container's exit ended this instance
        self.exit_code: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._master = -1
        self.pid_file = ctl.paths.state / f"exec-{self.id[:16]}.pid"
        self.runc_log = ctl.paths.state / f"exec-{self.id[:16]}.log"
        self.finished = asyncio.Event()
        self.detached = asyncio.Event()       # the client detached with the detach keys
        self._out: Write | None = None
        self._framed = not config.tty

    # ---- what the API shows ----------------------------------------------------------------
    @property
    def pid(self) -> int:
        if not self.running:
            return 0
        try:
            return int(self.pid_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def to_api(self) -> dict[str, Any]:
        c = self.config
        return {"ID": self.id, "ContainerID": self.container_id, "Running": self.running,
                "ExitCode": self.exit_code, "Pid": self.pid, "CanRemove": False,
                "DetachKeys": c.detach_keys, "OpenStdin": c.attach_stdin,
                "OpenStdout": c.attach_stdout, "OpenStderr": c.attach_stderr,
                "ProcessConfig": {"entrypoint": c.cmd[0], "arguments": c.cmd[1:], "tty": c.tty,
                                  "privileged": c.privileged, "user": c.user}}

    # ---- running ---------------------------------------------------------------------------
    def _argv(self, console: str = "") -> list[str]:
        c = self.config
        args = ["exec", "--pid-file", str(self.pid_file)]
        if console:
            args += ["--tty", "--detach", "--console-socket", console]
        if c.workdir:
            args += ["--cwd", c.workdir]
        for entry in c.env:
            args += ["--env", entry]
        if c.user:
            rootfs = self.ctl.paths.rootfs
            try:
                user = resolve_user(c.user, _read(rootfs / "etc/passwd"), _read(rootfs / "etc/group"))
            except ConfigError as e:
                raise ExecError(500, str(e)) from e
            args += ["--user", f"{user.uid}:{user.gid}"]
            for gid in user.additional_gids:
                args += ["--additional-gids", str(gid)]
        if c.privileged:
            args += [a for cap in _ALL_CAPS for a in ("--cap", cap)]
        runc = self.ctl.runc
        return [runc.binary, "--root", str(runc.root), "--log", str(self.runc_log), "--log-format", "json",
                *args, self.container_id, *c.cmd]

    def claim(self) -> None:
        """Mark the instance started (once); ExecError 409 if it was."""
        if self.running:
            raise ExecError(409, f"Error: Exec command {self.id} is already running")
        if self.started:
            raise ExecError(409, f"Error: Exec command {self.id} has already run")
        self.started = True

    async def run(self, write: Write | None, read: Read | None, framed: bool | None = None) -> int:
        """Run the process to its end; `write` gets its output, `read` gives the client's input
        (b"" at its end). The output is in multiplexed frames if `framed` (by default: unless
        the exec has a TTY; dockerd goes by the start request's `Tty`, so a TTY's output is
        framed as stdout when that asks for no TTY). Returns and records the exit code."""
        c = self.config
        self.running = not self.container_ended
        self._out = write
        self._framed = (not c.tty) if framed is None else framed
        code = 137               # recorded if the run is cancelled (the process is killed)
        try:
            if c.tty:
                code = await self._run_tty(read if c.attach_stdin else None)
            else:
                code = await self._run_pipes(read if c.attach_stdin else None)
            if code == RUNC_FAILED and not self.pid_file.exists():
                code = CANNOT_START
            return code
        except ExecError:
            code = CANNOT_START
            raise
        except OSError as e:
            code = CANNOT_START
            raise ExecError(500, f"exec failed: {e}") from e
        finally:
            self.running = False
            if self.exit_code is None:        # else: known when the container's exit ended it
                self.exit_code = code
            self.pid_file.unlink(missing_ok=True)
            self.runc_log.unlink(missing_ok=True)
            self.finished.set()

    async def _emit(self, data: bytes) -> None:
        out = self._out
        if out is None:
            return
        try:
            await out(data)
        except ConnectionError:
            if not self.detached.is_set():      # a detached client's connection is closed: fine
                raise

    def _detach(self) -> None:
        self._out = None
        self.detached.set()

    async def _run_pipes(self, read: Read | None) -> int:
        c, write = self.config, self._out
        pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        proc = await asyncio.create_subprocess_exec(
            *self._argv(), stdin=pipe if read else devnull,
            stdout=pipe if write and c.attach_stdout else devnull,
            stderr=pipe if write and c.attach_stderr else devnull, start_new_session=True)
        self._proc = proc

        async def copy_out(reader: asyncio.StreamReader | None, stream_id: int) -> None:
            if reader is None:
                return
            while chunk := await reader.read(READ_CHUNK):
                await self._emit(frame(stream_id, chunk) if self._framed else chunk)

        async def copy_in() -> None:
            assert proc.stdin is not None and read is not None
            with contextlib.suppress(ConnectionError):
                while data := await read():
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            proc.stdin.close()

        feeding = asyncio.ensure_future(copy_in()) if read else None
        try:
            await asyncio.gather(copy_out(proc.stdout, STDOUT), copy_out(proc.stderr, STDERR))
            return await proc.wait()
        finally:
            await self._end(proc, feeding)

    async def _run_tty(self, read: Read | None) -> int:
        """runc makes the container's pty and sends its master over a console socket; the process
        runs under `exec_reaper`, whose exit code is the process's."""
        sock_dir = tempfile.mkdtemp(prefix="shoal-exec-")     # short: a socket path has 108 bytes
        console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        master = -1
        try:
            path = os.path.join(sock_dir, "console.sock")
            console.bind(path)
            console.listen(1)
            console.setblocking(False)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", exec_reaper.__file__, str(self.pid_file), *self._argv(console=path),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
            self._proc = proc
            try:
                master = await self._receive_master(console, proc)
            except BaseException:
                await self._end(proc, None)
                raise
        finally:
            console.close()
            shutil.rmtree(sock_dir, ignore_errors=True)
        if master < 0:                      # runc failed before it made the pty
            return await self._helper_exit(proc)
        try:
            if self.config.console_size:
                set_window(master, *self.config.console_size)
            os.set_blocking(master, False)
        except BaseException:
            os.close(master)
            await self._end(proc, None)
            raise
        self._master = master

        scanner = detach_keys.EscapeScanner(detach_keys.parse(self.config.detach_keys or detach_keys.DEFAULT))

        async def copy_in() -> None:
            assert read is not None
            with contextlib.suppress(ConnectionError):
                while data := await read():
                    data, detach = scanner.feed(data)
                    if data:
                        await _write_fd(master, data)
                    if detach:
                        self._detach()
                        return
                await _write_fd(master, EOT)

        feeding = asyncio.ensure_future(copy_in()) if read else None
        try:
            while chunk := await _read_fd(master):
                await self._emit(frame(STDOUT, chunk) if self._framed else chunk)
            return await self._helper_exit(proc)
        finally:
            self._master = -1
            await self._end(proc, feeding)
            os.close(master)

    async def _helper_exit(self, proc: asyncio.subprocess.Process) -> int:
        """The helper's exit code, after passing on what it (runc) wrote to stderr: why the
        process could not start."""
        code = await proc.wait()
        assert proc.stderr is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):       # nothing else holds the pipe once the helper ends
                message = await proc.stderr.read()
                if message:
                    await self._emit(frame(STDOUT, message) if self._framed else message)
        return code

    @staticmethod
    async def _receive_master(console: socket.socket, proc: asyncio.subprocess.Process) -> int:
        """The pty master runc sends over `console`; -1 if the helper ends first (runc failed)."""
        loop = asyncio.get_running_loop()
        accepting = asyncio.ensure_future(loop.sock_accept(console))
        ending = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.wait({accepting, ending}, return_when=asyncio.FIRST_COMPLETED)
            if not accepting.done():
                return -1
            conn, _ = accepting.result()
        finally:
            await cancel_and_wait([accepting, ending])
        with conn:
            while True:
                try:
                    _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
                except BlockingIOError:
                    ready: asyncio.Future[None] = loop.create_future()
                    loop.add_reader(conn.fileno(), _set, ready)
                    try:
                        await ready
                    finally:
                        loop.remove_reader(conn.fileno())
                    continue
                if not fds:
                    raise ExecError(500, "exec failed: runc sent no console")
                for extra in fds[1:]:
                    os.close(extra)
                return fds[0]

    async def _end(self, proc: asyncio.subprocess.Process, feeding: asyncio.Future[None] | None) -> None:
        """Stop feeding input; if the process is still there (cancelled), kill it and runc
        (with a TTY: and `exec_reaper`)."""
        if feeding is not None:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
        if proc.returncode is None:
            pid = self.pid
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):    # its session: runc, and runc init if the
                os.killpg(proc.pid, signal.SIGKILL)          # process had not started (no pid yet)
            await asyncio.shield(proc.wait())

    def container_exited(self) -> None:
        """The container's exit was recorded: this instance ends now (its session later)."""
        if not self.started or self.finished.is_set():
            return
        self.container_ended = True
        self.running = False
        proc = self._proc
        if proc is not None and proc.returncode is not None and self.exit_code is None:
            code = proc.returncode
            self.exit_code = CANNOT_START if code == RUNC_FAILED and not self.pid_file.exists() else code

    def resize(self, height: int, width: int) -> None:
        if not self.running or self._proc is None:
            raise ExecError(409, f"Exec {self.id} is not running")
        if self._master < 0:
            return                 # no TTY: nothing to resize, as dockerd
        set_window(self._master, height, width)     # the kernel signals SIGWINCH to the process


class ExecRegistry:
    def __init__(self) -> None:
        self._instances: dict[str, ExecInstance] = {}
        self._detached: set[asyncio.Task[int]] = set()

    def add(self, instance: ExecInstance) -> None:
        self._instances[instance.id] = instance
        finished = [i for i in self._instances.values() if i.finished.is_set()]
        for old in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            self._instances.pop(old.id, None)

    def get(self, exec_id: str) -> ExecInstance:
        found = self._instances.get(exec_id)
        if found is None:
            raise ExecError(404, f"No such exec instance: {exec_id}")
        return found

    def of_container(self, cid: str) -> list[str]:
        """The IDs of the container's running execs (dockerd's `ExecIDs`: an exec leaves the
        container's list when it ends)."""
        return [i.id for i in self._instances.values() if i.container_id == cid and i.running]

    def container_exited(self, cid: str) -> None:
        """The executor recorded container `cid`'s exit: its started instances end now."""
        for instance in self._instances.values():
            if instance.container_id == cid:
                instance.container_exited()

    def spawn(self, instance: ExecInstance, on_exit: Callable[[int], None], write: Write | None = None,
              read: Read | None = None, framed: bool | None = None) -> asyncio.Task[int]:
        """Run `instance` in a task the registry owns (so a client that detaches, or never
        attached, leaves it running until `close`); `on_exit` hears its exit code. A client
        that stays attached awaits the task."""
        task = asyncio.get_running_loop().create_task(instance.run(write, read, framed),
                                                      name=f"exec {instance.id[:12]}")
        self._detached.add(task)

        def done(task: asyncio.Task[int]) -> None:
            self._detached.discard(task)
            if not task.cancelled():
                task.exception()      # retrieved here; an attached client reads it from the task
            on_exit(instance.exit_code if instance.exit_code is not None else -1)

        task.add_done_callback(done)
        return task

    def start_detached(self, instance: ExecInstance, on_exit: Callable[[int], None]) -> None:
        """Run `instance` without a client; `on_exit` hears its exit code."""
        self.spawn(instance, on_exit)

    async def close(self) -> None:
        await cancel_and_wait(list(self._detached))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


async def _read_fd(fd: int) -> bytes:
    """The next bytes from a non-blocking fd (a pty master); b"" at its end (EIO: no slave)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return os.read(fd, READ_CHUNK)
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno == errno.EIO:
                return b""
            raise
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _set, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


async def _write_fd(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
            continue
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _set, ready)
        try:
            await ready
        finally:
            loop.remove_writer(fd)


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_ALL_CAPS = [f"CAP_{name}" for name in (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ")]
