"""`ContainerController`: the runc implementation of the Controller protocol (`worker.exec`), one
container's lifecycle.

Theory of operation: `prepare → start → wait`, with `shutdown`/`terminate`/`remove` at any time.
Every step is idempotent and decides what to do from what exists (runc's state, the exit file,
the records in the container's directory), never from in-memory flags, so a controller built
by a restarted daemon for an adopted container behaves exactly like the original one.
  - prepare: write the config record first (so a crash leaves something cleanup recognises),
    mount the overlay, resolve the user in the image's passwd, acquire volumes, write
    /etc/hosts, hostname, resolv.conf, the injected secret and config files (under the state
    dir, on the run tmpfs: never on disk) and config.json, then conmon runs `runc create`.
    conmon is born in the shims cgroup (see `shim_spawner`), outside the daemon's cgroup.
  - start: if the container is created, the exec-fifo handshake of `runc start`
    (`Runc.start`).
  - wait: the exit, observed through a pidfd on conmon (event driven), then the exit code
    conmon wrote plus the OOM-kill counter of the memory cgroup, recorded in `exit.json`
    before anything can delete the cgroup. With a health check, wait also probes and raises
    `ContainerUnhealthy` once the container is unhealthy. `on_exit`, when set, hears the
    container's ID as the exit is recorded (by whichever controller records it first,
    before any waiter learns of it).
  - shutdown: the stop signal, the grace period, then SIGKILL to every process.
  - remove: kill, record the exit, `runc delete`, unmount, release volumes, delete the dir.
Errors are `ExecutorError`s with a one-line message for the task status, fatal to the task,
except what trying again can mend, raised as `TemporaryError`: the host short of processes, file
descriptors or memory while preparing, and stopping that did not happen (runc failed to signal
or delete, or the container had not exited `SHIM_EXIT_TIMEOUT` seconds after SIGKILL).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import resource
import shutil
import signal
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aio import cancel_and_wait
from worker.exec import ContainerState, ExecutorError, ExitStatus, TemporaryError
from worker.executor import bundle, rootfs
from worker.executor.health import HEALTHY, UNHEALTHY, HealthMonitor
from worker.executor.layout import Layout
from worker.executor.runtime import Conmon, Runc, RuntimeFailure, ShimPaths, pid_alive
from worker.executor.spec import (
    ConfigError,
    ContainerConfig,
    MountSpec,
    resolve_user,
    signal_number,
)
from worker.executor.volumes import ANONYMOUS_LABEL, VolumeStore

SHIM_EXIT_TIMEOUT = 10.0
# What a retried prepare may no longer meet: the host short of processes, descriptors or memory.
HOST_SHORTAGE = frozenset({errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM})
INJECTED_DIR = "files"         # under the state dir: the secret and config files


class ContainerUnhealthy(ExecutorError):
    """`wait` saw the container's health check fail; the container is left running."""


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return ""


class ContainerController:
    def __init__(self, layout: Layout, runc: Runc, conmon: Conmon, volumes: VolumeStore,
                 config: ContainerConfig, creating: asyncio.Semaphore | None = None) -> None:
        self.creating = creating or asyncio.Semaphore(1)
        self.layout = layout
        self.runc = runc
        self.conmon = conmon
        self.volumes = volumes
        self.config = config
        self.id = config.id
        self.paths = layout.container(config.id)
        self.on_exit: Callable[[str], None] | None = None
        self.final_exit: ExitStatus | None = None        # read by `remove` before the files go
        self.health: HealthMonitor | None = (
            HealthMonitor(runc, config.id, config.healthcheck, self.paths.state / "health.json")
            if config.healthcheck else None)

    # ---- observation -------------------------------------------------------------------

    async def runc_state(self) -> dict[str, Any] | None:
        return await self.runc.state(self.id)

    def exited(self) -> bool:
        """Cheap check (for log following): has the container's exit been recorded?"""
        return self.layout.exit_file(self.id).exists() or self.paths.exit_record.exists()

    async def state(self) -> ContainerState:
        st = await self.runc_state()
        exit_status = self._recorded_exit()
        if exit_status is None and self.layout.exit_file(self.id).exists():
            exit_status = self._record_exit()
        started = _read_text(self.paths.started_record).strip()
        health = self.health.tracker.to_engine() if self.health else None
        if st is None:
            return ContainerState("absent", 0, started, exit_status, health)
        status = st.get("status", "")
        if status == "running" and exit_status is None:
            return ContainerState("running", int(st.get("pid", 0)), started, None, health)
        if status == "created":
            return ContainerState("created", int(st.get("pid", 0)), started, None, health)
        return ContainerState("stopped", 0, started, exit_status, health)

    def _recorded_exit(self) -> ExitStatus | None:
        text = _read_text(self.paths.exit_record)
        return ExitStatus(**json.loads(text)) if text else None

    def _record_exit(self, error: str = "") -> ExitStatus:
        """Turn conmon's exit file plus the OOM counter into exit.json (once)."""
        recorded = self._recorded_exit()
        if recorded is not None:
            return recorded
        code_text = _read_text(self.layout.exit_file(self.id)).strip()
        if code_text:
            status = ExitStatus(int(code_text), self.layout.oom_kill_count(self.id) > 0, _now())
        else:
            status = ExitStatus(-1, self.layout.oom_kill_count(self.id) > 0, _now(),
                                error or "container exited without a recorded exit code")
        if self.paths.state.is_dir():
            _write_atomic(self.paths.exit_record, json.dumps(asdict(status)))
        if self.on_exit is not None:
            self.on_exit(self.id)
        return status

    def _conmon_pid(self) -> int:
        text = _read_text(self.paths.conmon_pidfile).strip()
        pid = int(text) if text.isdigit() else 0
        return pid if pid_alive(pid, self.id) else 0

    async def _wait_exit(self) -> ExitStatus:
        """Block until the container has exited; its recorded exit status."""
        recorded = self._recorded_exit()
        if recorded is not None:
            return recorded
        pid = self._conmon_pid()
        if pid:
            await _wait_pid_exit(pid)
        if not self.layout.exit_file(self.id).exists():
            st = await self.runc_state()
            if st is not None and st.get("status") in ("running", "created"):
                raise ExecutorError(f"the shim (conmon) of container {self.id} is gone while the "
                                    "container still runs")
            return self._record_exit("the shim (conmon) exited without recording an exit code")
        return self._record_exit()

    # ---- the protocol ------------------------------------------------------------------

    async def prepare(self) -> None:
        if await self.runc_state() is not None:
            return
        try:
            self.config.validate()
        except ConfigError as e:
            raise ExecutorError(str(e)) from e
        p = self.paths
        try:
            async with self.creating:
                await asyncio.to_thread(self._prepare_host)
                await self.conmon.create(self.id, self.config.name, ShimPaths(
                    bundle=p.bundle, log=p.log, container_pidfile=p.container_pidfile,
                    conmon_pidfile=p.conmon_pidfile, exit_dir=self.layout.exit_dir,
                    socket_dir=self.layout.socket_dir, shim_output=p.shim_output),
                    terminal=self.config.tty, stdin=self.config.stdin, leave_stdin_open=self.config.tty)
        except (OSError, ConfigError, RuntimeFailure, ValueError) as e:
            if await self.runc_state() is None:     # nothing was created: undo the host side
                await asyncio.to_thread(self._remove_files)
            error = TemporaryError if isinstance(e, OSError) and e.errno in HOST_SHORTAGE else ExecutorError
            raise error(f"preparing container {self.config.name or self.id}: {e}") from e

    def _prepare_host(self) -> None:
        """Everything on the host before conmon, in one worker-thread hop: the config record
        first (what cleanup recognises after a crash), then the files of `_prepare_files`."""
        p = self.paths
        try:
            p.state.mkdir()
            fresh = True
        except FileExistsError:
            fresh = False
        p.dir.mkdir(exist_ok=True)
        _write_atomic(p.config, json.dumps(self.config.to_json()))
        stale = [self.layout.exit_file(self.id)]
        if not fresh:       # a retried prepare: drop what an earlier run of this id recorded
            stale += [p.exit_record, p.started_record]
        for path in stale:
            path.unlink(missing_ok=True)
        self._prepare_files()

    def _prepare_files(self) -> None:
        c, p = self.config, self.paths
        rootfs.mount_overlay(c.lower_dirs, p.upper, p.work, p.rootfs)
        user = resolve_user(c.user, _read_text(p.rootfs / "etc/passwd"),
                            _read_text(p.rootfs / "etc/group"))
        volume_sources = {}
        for m in c.mounts:
            if m.type == "volume":
                name = volume_name(c.id, m)
                labels = dict(m.volume_labels)
                if not m.source:
                    labels[ANONYMOUS_LABEL] = ""
                volume_sources[m.target] = str(self.volumes.acquire(name, c.id, labels))
            elif m.type == "bind" and not Path(m.source).exists():
                raise ConfigError(f"bind source path does not exist: {m.source}")
        p.etc.mkdir(exist_ok=True)
        hostname = c.hostname or c.id[:12]
        (p.etc / "hostname").write_text(hostname + "\n")
        (p.etc / "hosts").write_text(bundle.hosts_file(hostname, c.extra_hosts))
        (p.etc / "resolv.conf").write_text(
            c.resolv_conf if c.resolv_conf and not c.dns_servers
            else bundle.resolv_conf(_read_text(Path("/etc/resolv.conf")), c.dns_servers))
        injected = _write_injected_files(c, p.state / INJECTED_DIR)
        spec_config = c if c.hostname else _with_hostname(c, hostname)
        spec = bundle.build_spec(spec_config, user, bundle.HostPaths(
            rootfs=str(p.rootfs), cgroups_path=self.layout.cgroups_path(c.id),
            etc_files={f"/etc/{n}": str(p.etc / n) for n in ("hostname", "hosts", "resolv.conf")},
            volume_sources=volume_sources, injected_files=injected,
            nofile_hard=resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        p.bundle.mkdir(exist_ok=True)
        _write_atomic(p.bundle / "config.json", json.dumps(spec))

    async def start(self, *, until_healthy: bool = True) -> None:
        """Start the created container; with a health check and `until_healthy` (a task's
        start), return only once it is healthy. A standalone container passes False: its
        health only shows, as with dockerd."""
        st = await self.runc_state()
        if st is None:
            raise ExecutorError(f"container {self.id} is not prepared")
        if st.get("status") == "created":
            try:
                await self.runc.start(self.id)
            except RuntimeFailure as e:
                raise ExecutorError(str(e)) from e
            _write_atomic(self.paths.started_record, _now())
        if until_healthy:
            await self._until_healthy()

    async def _until_healthy(self) -> None:
        """With a health check, return only once the container is healthy (as swarmkit's
        controller does): the task stays STARTING, out of every load balancer's rotation, until
        it can serve. Unhealthy, or stopped first: an error that fails the task."""
        if self.health is None or self.health.status == HEALTHY:
            return
        if await self.health.run_until(self._running, {HEALTHY, UNHEALTHY}) is None:
            raise ExecutorError(f"task: container {self.id} stopped before it was healthy")
        if self.health.status == UNHEALTHY:
            raise ContainerUnhealthy(f"task: container {self.id} is unhealthy: {self._last_probe_output()}")

    async def wait(self) -> ExitStatus:
        """The exit status once the container exits; raises ContainerUnhealthy first if its
        health check fails. Cancelling the waiter leaves the container alone."""
        if self.health is None or self.exited():
            return await self._wait_exit()
        exit_task = asyncio.create_task(self._wait_exit())
        health_task = asyncio.create_task(self.health.run_until_unhealthy(self._running))
        try:
            done, _ = await asyncio.wait({exit_task, health_task},
                                         return_when=asyncio.FIRST_COMPLETED)
            if exit_task not in done and health_task.result() is None:
                return await exit_task     # the probe failed because the container stopped
        finally:
            await cancel_and_wait([exit_task, health_task])
        if exit_task in done:
            return exit_task.result()
        raise ContainerUnhealthy(f"task: container {self.id} is unhealthy: "
                                 f"{self._last_probe_output()}")

    async def wait_exit(self) -> ExitStatus:
        """The exit status once the container exits (no health probes: for API waiters)."""
        return await self._wait_exit()

    async def _running(self) -> bool:
        st = await self.runc_state()
        return st is not None and st.get("status") == "running" and not self.exited()

    def _last_probe_output(self) -> str:
        if self.health and self.health.tracker.log:
            last = self.health.tracker.log[-1]
            return f"probe exited {last.exit_code}: {last.output.strip()[:200]}"
        return "no probe result"

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop signal, then up to `grace` seconds (default: the config's), then SIGKILL."""
        st = await self.runc_state()
        if st is None or st.get("status") not in ("running", "created") or self.exited():
            return
        grace = self.config.stop_grace if grace is None else grace
        if st.get("status") == "created":
            await self.terminate()
            return
        try:
            await self.runc.kill(self.id, signal_number(self.config.stop_signal))
        except RuntimeFailure as e:
            raise TemporaryError(f"stopping container {self.id}: {e}") from e
        try:
            async with asyncio.timeout(grace):
                await self._wait_exit()
            return
        except TimeoutError:
            pass
        await self.terminate()

    async def terminate(self) -> None:
        st = await self.runc_state()
        if st is None or self.exited():
            return
        try:
            if st.get("status") in ("running", "created", "paused"):
                await self.runc.kill(self.id, signal.SIGKILL, all_processes=True)
            async with asyncio.timeout(SHIM_EXIT_TIMEOUT):
                await self._wait_exit()
        except RuntimeFailure as e:
            raise TemporaryError(f"killing container {self.id}: {e}") from e
        except TimeoutError as e:
            raise TemporaryError(f"container {self.id} has not exited {SHIM_EXIT_TIMEOUT:g}s after "
                                 "SIGKILL") from e

    async def remove(self) -> None:
        """Leave nothing behind: process, runc state, cgroup, mount, bundle, volume refs."""
        st = await self.runc_state()
        if st is not None:
            await self.terminate()
            if not self.exited():
                self._record_exit("removed before it exited")
            await self._delete_runtime_state("removing")
        await self._reap_shim()
        self.final_exit = self._recorded_exit()     # the record goes with the files; waiters need it
        await asyncio.to_thread(self._remove_files)

    async def reset(self) -> None:
        """Forget the runtime side of a container that has exited (runc's state, the shim's
        files, the exit records, the rootfs mount), keeping its config record, writable layer,
        log and volumes, so that `prepare` makes it anew: `docker start` of an exited container."""
        st = await self.runc_state()
        if st is not None and st.get("status") in ("running", "created", "paused") and not self.exited():
            raise ExecutorError(f"container {self.id} has not exited")
        if st is not None:
            await self._delete_runtime_state("resetting")
        await self._reap_shim()
        await asyncio.to_thread(self._reset_files)

    async def _delete_runtime_state(self, doing: str) -> None:
        try:
            await self.runc.delete(self.id, force=True)
        except RuntimeFailure as e:
            raise TemporaryError(f"{doing} container {self.id}: {e}") from e

    async def _reap_shim(self) -> None:
        """Wait (bounded) for the container's shim to exit; kill it if it has not."""
        pid = self._conmon_pid()
        if pid:
            try:
                async with asyncio.timeout(SHIM_EXIT_TIMEOUT):
                    await _wait_pid_exit(pid)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)

    def _reset_files(self) -> None:
        rootfs.unmount(self.paths.rootfs)
        for path in (self.layout.exit_file(self.id), self.paths.exit_record, self.paths.started_record,
                     self.layout.socket_dir / self.id):
            path.unlink(missing_ok=True)

    def _remove_files(self) -> None:
        rootfs.unmount(self.paths.rootfs)
        for m in self.config.mounts:
            if m.type == "volume":
                name = volume_name(self.id, m)
                self.volumes.release(name, self.id)
                if not m.source and self.volumes.exists(name):
                    self.volumes.remove(name, force=True)
        self.volumes.release_all(self.id)
        for d in self.layout.cgroup_dirs(self.id):
            if d.is_dir():
                try:
                    d.rmdir()
                except OSError:
                    pass
        self.layout.exit_file(self.id).unlink(missing_ok=True)
        shutil.rmtree(self.layout.socket_dir / self.id, ignore_errors=True)
        shutil.rmtree(self.paths.state, ignore_errors=True)
        shutil.rmtree(self.paths.dir, ignore_errors=True)


def _write_injected_files(config: ContainerConfig, into: Path) -> dict[str, str]:
    """Write each injected file (numbered, so no name from the task reaches the host path) with
    its owner and mode; container path → host file. Created 0600 and only then given its mode
    and owner, so nobody reads it while it is being written."""
    out: dict[str, str] = {}
    if not config.files:
        return out
    into.mkdir(mode=0o700, exist_ok=True)
    for index, injected in enumerate(config.files):
        path = into / str(index)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(injected.data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        os.chown(path, injected.uid, injected.gid)
        os.chmod(path, injected.mode)
        out[injected.target] = str(path)
    return out


def volume_name(cid: str, mount: MountSpec) -> str:
    """The named volume, or a stable name for the container's anonymous volume at a target."""
    if mount.source:
        return mount.source
    return f"{cid}-{hashlib.sha256(mount.target.encode()).hexdigest()[:12]}"


def _with_hostname(config: ContainerConfig, hostname: str) -> ContainerConfig:
    from dataclasses import replace
    return replace(config, hostname=hostname)


async def _wait_pid_exit(pid: int) -> None:
    """Await the exit of any process (not only a child) through a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)
