"""SCHED_FIFO for the processes a benchmark measures, so that other load on a shared machine does
not decide the figures (the measured processes take the CPUs they need, a few seconds at a time).

`realtime(pids)` sets every thread of the given processes to SCHED_FIFO at `REALTIME_PRIORITY`
for the body; threads and processes they start meanwhile inherit it (a daemon's worker threads,
the runc, conmon and container processes it forks). Afterwards every thread of those processes
and of all their descendants goes back to SCHED_OTHER. The kernel's real-time throttling (95% of
each second by default) still leaves the rest of the machine a share.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

from bench.support.netperf import REALTIME_PRIORITY


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for tid in _threads(current):
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                continue
    return out


def _set(pids: Iterable[int], policy: int, priority: int) -> None:
    for pid in pids:
        for tid in _threads(pid):
            with contextlib.suppress(OSError):     # a thread that ended meanwhile
                os.sched_setscheduler(tid, policy, os.sched_param(priority))


@contextlib.contextmanager
def realtime(pids: Iterable[int], enabled: bool = True) -> Iterator[None]:
    roots = list(pids)
    if not enabled:
        yield
        return
    try:
        _set(roots, os.SCHED_FIFO, REALTIME_PRIORITY)
        yield
    finally:
        _set([p for root in roots for p in _descendants(root)], os.SCHED_OTHER, 0)
