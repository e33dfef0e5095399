"""Destroying everything an executor on a data dir owns, by force, once its daemon is gone.

For whoever owns a whole data dir and is throwing it away: a lab host being torn down, a test's
daemon or executor, a benchmark. It is not cleanup (`cleanup.reap_stale` keeps live containers);
this ends them. Every process is found through the executor's own cgroups (its containers, their
conmon shims, the shim spawner), so nothing is killed by name or pattern. Then every mount below
the data dir goes (overlay rootfs mounts, the run tmpfs), deepest first, and the cgroups.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from worker.executor import rootfs
from worker.executor.layout import EXECUTOR_ID_FILE, Layout

KILL_TIMEOUT = 5.0


def destroy_executor(data_dir: Path) -> None:
    """Kill, unmount and un-cgroup everything of the executor on `data_dir`; the files stay
    (the caller removes the dir). A data dir no executor used is left alone."""
    if (data_dir / EXECUTOR_ID_FILE).exists():
        cgroups = Layout(data_dir).cgroup_dirs()
        _kill_members(cgroups)
    else:
        cgroups = []
    rootfs.unmount_below(data_dir)
    for parent in cgroups:
        remove_cgroup_tree(parent)
        with contextlib.suppress(OSError):
            parent.parent.rmdir()           # the shared /shoal parent, once no executor uses it


def _members(cgroups: list[Path]) -> set[int]:
    pids: set[int] = set()
    for parent in cgroups:
        if parent.is_dir():
            for procs in parent.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
    return pids


def _kill_members(cgroups: list[Path]) -> None:
    deadline = time.monotonic() + KILL_TIMEOUT
    while (pids := _members(cgroups)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)       # our own children (a shim spawner) need reaping
        time.sleep(0.01)                          # poll, bounded by the deadline, until they left


def remove_cgroup_tree(top: Path) -> None:
    """Remove the cgroup directory `top` and every one below it, deepest first (each only
    goes once empty of processes)."""
    if not top.is_dir():
        return
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()
