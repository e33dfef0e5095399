"""The executor of one worker: makes container controllers and re-adopts live containers.

Theory of operation: all state lives under the data dir (see `layout`), in runc's state dir
and with the conmon shims, none of it in this object, so a new `Executor` on the same data dir
(a restarted daemon) sees the same containers. At most `max_parallel_creates` containers are
being created at once (`default_parallel_creates`); starting, stopping and removing are not
bounded. `start_up()` first mounts the run tmpfs (see `layout`), reaps what a crash left
half-made and starts the shim spawner helper (see `shim_spawner`; `close()` stops it), then
`list_existing()` returns controllers for every container runc still knows,
running or exited meanwhile, with their recorded configs; nothing is restarted.
`on_event`, when set, hears what happens inside a container that no API call or task step
caused: a health check's change of status (`health_status: healthy`), as (action, container ID).
`on_exit`, when set, hears the ID of a container whose exit one of its controllers records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from worker.exec import ExecutorError
from worker.executor.cleanup import CleanupReport, reap_stale
from worker.executor.controller import ContainerController
from worker.executor.health import HealthMonitor
from worker.executor.layout import Layout
from worker.executor.logs import LogEntry, read_log
from worker.executor.runtime import Conmon, Runc
from worker.executor.spec import ContainerConfig
from worker.executor.volumes import VolumeStore

log = logging.getLogger("shoal.executor")


def default_parallel_creates() -> int:
    """How many containers are created at once. Creating one is CPU work (runc, the shim, the
    overlay mount): beyond a few per core, a burst only makes every container of it wait for
    all the others, where a bound lets the first ones run while the rest are made."""
    return 3 * (os.cpu_count() or 1)


class Executor:
    def __init__(self, data_dir: Path, *, cgroup_parent: str | None = None,
                 runc_binary: str | None = None, conmon_binary: str | None = None,
                 max_parallel_creates: int | None = None) -> None:
        self.layout = Layout(data_dir, cgroup_parent)
        self.runc = Runc(self.layout.runc_root, runc_binary)
        self.conmon = Conmon(self.runc, conmon_binary, shim_cgroup=self.layout.move_to_shim_cgroup,
                             spawner_log=self.layout.data_dir / "shim-spawner.log")
        self.volumes = VolumeStore(self.layout.volumes_dir)
        self.creating = asyncio.Semaphore(max_parallel_creates or default_parallel_creates())
        self.on_event: Callable[[str, str], None] | None = None
        self.on_exit: Callable[[str], None] | None = None
        self._health: weakref.WeakValueDictionary[str, HealthMonitor] = weakref.WeakValueDictionary()

    def controller(self, config: ContainerConfig) -> ContainerController:
        """A controller for `config` (nothing happens until `prepare`)."""
        ctl = ContainerController(self.layout, self.runc, self.conmon, self.volumes, config, self.creating)
        ctl.on_exit = self._exited
        if ctl.health is not None:
            # one monitor per container while anything holds it (the loop that probes): the
            # controller an inspect makes shows the live status, not a fresh "starting"
            shared = self._health.get(config.id)
            if shared is not None and shared.tracker.check == config.healthcheck:
                ctl.health = shared
            else:
                ctl.health.on_change = lambda status: self._event(f"health_status: {status}", config.id)
                self._health[config.id] = ctl.health
        return ctl

    def _exited(self, cid: str) -> None:
        if self.on_exit is not None:        # looked up now: set after the controller was made too
            self.on_exit(cid)

    def _event(self, action: str, cid: str) -> None:
        if self.on_event is not None:
            self.on_event(action, cid)

    async def start_up(self) -> CleanupReport:
        """Mount the run tmpfs (unless a previous daemon left it mounted), reap leftovers of
        containers that are not alive; call once, before anything else."""
        self.layout.mount_run_dir()
        _, report = await reap_stale(self.layout, self.runc, self.volumes)
        await self.conmon.start_spawner()
        return report

    def close(self) -> None:
        """Stop the helper that starts shims (containers and their shims keep running)."""
        self.conmon.close()

    async def list_existing(self) -> list[ContainerController]:
        """Controllers for every container runc knows under this executor (live restore)."""
        out = []
        for state in await self.runc.list_containers():
            cid = state["id"]
            ctl = self.get(cid)
            if ctl is None:
                log.warning("runc knows container %s but its config record is missing", cid)
                continue
            out.append(ctl)
        return out

    def get(self, cid: str) -> ContainerController | None:
        """The controller of a container this executor made, from its config record."""
        record = self.layout.container(cid).config
        try:
            data = json.loads(record.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise ExecutorError(f"config record of container {cid} is corrupt: {e}") from e
        return self.controller(ContainerConfig.from_json(data))

    async def logs(self, cid: str, *, tail: int | None = None, follow: bool = False,
                   since: float | None = None) -> AsyncIterator[LogEntry]:
        """The container's log entries; with `follow`, until it exits (or is removed meanwhile:
        its exit record goes with it) and the log is drained."""
        ctl = self.get(cid)
        if ctl is None:
            raise ExecutorError(f"no such container: {cid}")
        state_dir = ctl.paths.state

        def finished() -> bool:
            return ctl.exited() or not state_dir.exists()

        async for entry in read_log(ctl.paths.log, tail=tail, follow=follow,
                                    finished=finished, since=since):
            yield entry
