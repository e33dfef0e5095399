"""Reaping what a crash left half-made, when the executor starts.

Theory of operation: a container is alive exactly when runc (under this executor's `--root`)
knows it; those are adopted, never touched. Everything else the executor owns is derived
from a container id and is removed when that id is not alive: a container directory (on disk
or on the run tmpfs) without runc state (a prepare or a remove cut short), its overlay mount,
its cgroup directories under this executor's cgroup parent, its exit file and attach sockets,
its volume refs. runc state whose container directory is gone (a remove cut short after the directory went) is deleted
with `runc delete --force`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from worker.executor import rootfs
from worker.executor.layout import SHIM_CGROUP, Layout
from worker.executor.runtime import Runc
from worker.executor.volumes import VolumeStore

log = logging.getLogger("shoal.executor.cleanup")


@dataclass
class CleanupReport:
    runc_deleted: list[str] = field(default_factory=list)
    dirs_removed: list[str] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)
    cgroups_removed: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.runc_deleted or self.dirs_removed or self.unmounted or self.cgroups_removed)


async def reap_stale(layout: Layout, runc: Runc, volumes: VolumeStore) -> tuple[set[str], CleanupReport]:
    """Remove leftovers of dead containers; the ids of the live (adoptable) ones."""
    report = CleanupReport()
    known = {c["id"] for c in await runc.list_containers()}
    dirs = {d.name for parent in (layout.containers_dir, layout.states_dir) if parent.is_dir()
            for d in parent.iterdir() if d.is_dir()}
    for cid in sorted(known - dirs):
        await runc.delete(cid, force=True)
        report.runc_deleted.append(cid)
    live = known & dirs
    await asyncio.to_thread(_reap_files, layout, volumes, live, dirs - live, report)
    if not report.empty():
        log.info("reaped leftovers: %s", report)
    return live, report


def _reap_files(layout: Layout, volumes: VolumeStore, live: set[str], dead_dirs: set[str],
                report: CleanupReport) -> None:
    for mount_point in sorted(rootfs.mounts_under(layout.states_dir), reverse=True):
        cid = Path(mount_point).relative_to(layout.states_dir).parts[0]
        if cid not in live:
            rootfs.unmount(Path(mount_point))
            report.unmounted.append(mount_point)
    for cid in sorted(dead_dirs):
        paths = layout.container(cid)
        shutil.rmtree(paths.state, ignore_errors=True)
        shutil.rmtree(paths.dir, ignore_errors=True)
        report.dirs_removed.append(cid)
    for exit_file in layout.exit_dir.iterdir():
        if exit_file.name not in live:
            exit_file.unlink(missing_ok=True)
    for sock in layout.socket_dir.iterdir():
        if sock.name not in live:
            shutil.rmtree(sock, ignore_errors=True)
    volumes.drop_refs_except(live)
    for parent in layout.cgroup_dirs():
        if not parent.is_dir():
            continue
        for child in parent.iterdir():
            if child.name == SHIM_CGROUP:
                with contextlib.suppress(OSError):
                    child.rmdir()      # only succeeds once no shim is left in it
                continue
            if child.is_dir() and child.name not in live:
                try:
                    child.rmdir()
                    report.cgroups_removed.append(str(child))
                except OSError as e:
                    log.warning("cannot remove stale cgroup %s: %s", child, e)
