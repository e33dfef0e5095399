"""Where the executor keeps things under the data dir, and the cgroup path of a container.

Theory of operation: one `Layout` per executor names every path, so the controller, cleanup and
live restore agree on them. The cgroup parent includes an executor id that is generated once
per data dir and persisted, so several daemons on one machine never share cgroups and a
restarted daemon finds its own again.

What lives only as long as the containers do (runc's state, bundles, pid and exit files, the
overlay mount points) goes into `run/`, a tmpfs the executor mounts (`mount_run_dir`): it
outlives a daemon restart (live restore) but not a reboot (when no container survives either),
and creating a container's dozen small files there costs a fraction of what it costs on a
journalled disk file system. What must survive is on disk: each container's writable layer and
its log.

    <data-dir>/executor-id              random id, stable for this data dir
    <data-dir>/volumes/<name>/_data     local volumes
    <data-dir>/containers/<cid>/        on disk: upper/, work/ (the writable layer), container.log
    <data-dir>/run/                     tmpfs:
        runc/                           runc --root (container state)
        exits/<cid>                     exit codes written by conmon
        sockets/                        conmon attach sockets (kept apart from exits/)
        containers/<cid>/               shoal.json (the config record), bundle/, rootfs/ (the
                                        overlay mount), etc/, pid files, conmon.out, exit.json
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from worker.executor import rootfs

CGROUP_ROOT = Path("/sys/fs/cgroup")
SHIM_CGROUP = "shims"          # child of the cgroup parent holding the conmon processes
MS_NOSUID, MS_NODEV, MS_PRIVATE = 2, 4, 1 << 18
EXECUTOR_ID_FILE = "executor-id"

log = logging.getLogger("shoal.executor")


RUN_DIR_SIZE = "256m"          # bundles and records are small; this bounds a runaway writer


@dataclass(frozen=True)
class ContainerPaths:
    dir: Path                  # on disk: the writable layer and the log
    state: Path                # on the run tmpfs: everything else

    @property
    def config(self) -> Path:
        return self.state / "shoal.json"

    @property
    def standalone_record(self) -> Path:
        """What `docker create` asked for, beside the config (worker.standalone); only there
        for a standalone container: a task's container has none."""
        return self.state / "standalone.json"

    @property
    def bundle(self) -> Path:
        return self.state / "bundle"

    @property
    def rootfs(self) -> Path:
        return self.state / "rootfs"

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def etc(self) -> Path:
        return self.state / "etc"

    @property
    def log(self) -> Path:
        return self.dir / "container.log"

    @property
    def container_pidfile(self) -> Path:
        return self.state / "container.pid"

    @property
    def conmon_pidfile(self) -> Path:
        return self.state / "conmon.pid"

    @property
    def shim_output(self) -> Path:
        return self.state / "conmon.out"

    @property
    def exit_record(self) -> Path:
        return self.state / "exit.json"

    @property
    def started_record(self) -> Path:
        return self.state / "started"

    def exists(self) -> bool:
        return self.dir.exists() or self.state.exists()


class Layout:
    def __init__(self, data_dir: Path, cgroup_parent: str | None = None) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.executor_id = self._executor_id()
        self.cgroup_parent = (cgroup_parent or f"/shoal/{self.executor_id}").rstrip("/")
        self.containers_dir.mkdir(exist_ok=True)

    def mount_run_dir(self) -> None:
        """Mount the run tmpfs unless it is mounted already (a restarted daemon finds its
        containers' state there), then make its directories. Without the right to mount (not
        root), `run/` stays a plain directory: everything works, only slower."""
        self.run_dir.mkdir(exist_ok=True)
        if not rootfs.is_mounted(self.run_dir):
            try:
                rootfs.mount("tmpfs", self.run_dir, "tmpfs", MS_NOSUID | MS_NODEV,
                             f"mode=0700,size={RUN_DIR_SIZE}")
                # Private: the containers' overlay mounts made below it do not propagate into
                # every other mount namespace (each container's, while runc sets it up).
                rootfs.mount("none", self.run_dir, "", MS_PRIVATE)
            except OSError as e:
                log.warning("cannot mount a tmpfs on %s, using the disk: %s", self.run_dir, e)
        for d in (self.runc_root, self.exit_dir, self.socket_dir, self.states_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _executor_id(self) -> str:
        path = self.data_dir / EXECUTOR_ID_FILE
        try:
            text = path.read_text().strip()
            if text:
                return text
        except FileNotFoundError:
            pass
        new = secrets.token_hex(6)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(new + "\n")
        os.replace(tmp, path)
        return new

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def runc_root(self) -> Path:
        return self.run_dir / "runc"

    @property
    def exit_dir(self) -> Path:
        return self.run_dir / "exits"

    @property
    def socket_dir(self) -> Path:
        return self.run_dir / "sockets"

    @property
    def states_dir(self) -> Path:
        return self.run_dir / "containers"

    @property
    def volumes_dir(self) -> Path:
        return self.data_dir / "volumes"

    @property
    def containers_dir(self) -> Path:
        return self.data_dir / "containers"

    def container(self, cid: str) -> ContainerPaths:
        return ContainerPaths(self.containers_dir / cid, self.states_dir / cid)

    def exit_file(self, cid: str) -> Path:
        return self.exit_dir / cid

    def cgroups_path(self, cid: str) -> str:
        return f"{self.cgroup_parent}/{cid}"

    def cgroup_dirs(self, cid: str | None = None) -> list[Path]:
        """The container's (or, with None, the parent's) directory in every hierarchy."""
        rel = (self.cgroups_path(cid) if cid else self.cgroup_parent).lstrip("/")
        if (CGROUP_ROOT / "cgroup.controllers").exists():       # unified (v2)
            return [CGROUP_ROOT / rel]
        out = []
        for hierarchy in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
            if hierarchy.is_dir() and not hierarchy.is_symlink():
                out.append(hierarchy / rel)
        return out

    def move_to_shim_cgroup(self, pid: int) -> list[str]:
        """Put a shim (conmon) into `<cgroup-parent>/shims`, out of the daemon's own cgroup, so
        stopping the daemon's service cgroup does not take the containers' shims with it.
        Returns the hierarchies where that failed (cpuset is skipped: an unconfigured cpuset
        cgroup takes no tasks)."""
        failed = []
        for parent in self.cgroup_dirs():
            if "cpuset" in parent.relative_to(CGROUP_ROOT).parts[0].split(","):
                continue
            shims = parent / SHIM_CGROUP
            try:
                shims.mkdir(parents=True, exist_ok=True)
                (shims / "cgroup.procs").write_text(f"{pid}\n")
            except OSError:
                failed.append(str(parent))
        return failed

    def oom_kill_count(self, cid: str) -> int:
        """How many processes the kernel OOM-killed in the container's memory cgroup."""
        rel = self.cgroups_path(cid).lstrip("/")
        for path, key in ((CGROUP_ROOT / "memory" / rel / "memory.oom_control", "oom_kill"),
                          (CGROUP_ROOT / rel / "memory.events", "oom_kill")):
            try:
                text = path.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
        return 0
