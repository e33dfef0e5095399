"""The executor of one worker: makes container controllers and re-adopts live containers.

Theory of operation: all state lives under the data dir (see `layout`), in runc's state dir
and with the conmon shims, none of it in this object, so a new `Executor` on the same data dir
(a restarted daemon) sees the same containers. `start_up()` first reaps what a crash left
half-made and starts the shim spawner helper (see `shim_spawner`; `close()` stops it), then
`list_existing()` returns controllers for every container runc still knows,
running or exited meanwhile, with their recorded configs; nothing is restarted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from worker.executor.cleanup import CleanupReport, reap_stale
from worker.executor.controller import ContainerController, ExecutorError
from worker.executor.layout import Layout
from worker.executor.logs import LogEntry, read_log
from worker.executor.runtime import Conmon, Runc
from worker.executor.spec import ContainerConfig
from worker.executor.volumes import VolumeStore

log = logging.getLogger("shoal.executor")


class Executor:
    def __init__(self, data_dir: Path, *, cgroup_parent: str | None = None,
                 runc_binary: str | None = None, conmon_binary: str | None = None) -> None:
        self.layout = Layout(data_dir, cgroup_parent)
        self.layout.mount_run_dir()
        self.runc = Runc(self.layout.runc_root, runc_binary)
        self.conmon = Conmon(self.runc, conmon_binary, shim_cgroup=self.layout.move_to_shim_cgroup,
                             spawner_log=self.layout.data_dir / "shim-spawner.log")
        self.volumes = VolumeStore(self.layout.volumes_dir)

    def controller(self, config: ContainerConfig) -> ContainerController:
        """A controller for `config` (nothing happens until `prepare`)."""
        return ContainerController(self.layout, self.runc, self.conmon, self.volumes, config)

    async def start_up(self) -> CleanupReport:
        """Reap leftovers of containers that are not alive; call once before adopting."""
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
        """The container's log entries; with `follow`, until it exits and the log is drained."""
        ctl = self.get(cid)
        if ctl is None:
            raise ExecutorError(f"no such container: {cid}")
        async for entry in read_log(ctl.paths.log, tail=tail, follow=follow,
                                    finished=ctl.exited, since=since):
            yield entry
