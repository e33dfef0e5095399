"""Chaos at the swarm level (issue 15, item 3): on 3 managers + 3 workers a seeded nemesis kills
the leader and workers, cuts nodes off and restarts daemons while a driver changes services through
any manager; after every undo and at the end the invariants of tests/swarm/chaos.py must hold.

The seed is printed first and named in every failure; SHOAL_CHAOS_SEED=N replays it."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.lab import Lab
from tests.swarm import chaos
from tests.swarm.helpers import eventually, load_busybox_everywhere, set_heartbeat

# After an undo (heal, restart), the seconds within which the swarm must have converged: the
# issue's 10 s. Measured from the undo, so it includes the driver's operation in flight then (a
# write forwarded through a manager that was cut off waits for TCP's next retransmission after
# the heal). Session 4 saw rounds of up to 13.5 s after leader kills and manager cuts on a loaded
# machine. Causes found and fixed in session 5: agents looped on the dead leader that followers
# still named during each election (~50 TLS connects a second per agent on every node); the
# driver retried "update out of sequence" (a definite refusal) for its whole budget; data queued
# into a partition (forwarded writes, Raft appends) waited after the heal for TCP's doubled
# retransmission timeout (now capped at 1 s, rpc/liveness.py and raft/transport.py). Since then
# most rounds take under 1 s and the worst seen was 3.9 s (load average ~5 on 2 cores).
# SHOAL_CHAOS_CONVERGE_BOUND=N overrides it.
CONVERGE_BOUND = float(os.environ.get("SHOAL_CHAOS_CONVERGE_BOUND", "10"))
GIVE_UP = 90.0  # how long a failing convergence is watched, to report what stayed wrong


def seeds(count: int) -> list[int]:
    fixed = os.environ.get("SHOAL_CHAOS_SEED")
    if fixed:
        return [int(fixed)]
    return [random.randrange(1, 1_000_000) for _ in range(count)]


def chaos_lab(make_lab: Callable[..., Lab], tmp_path: Path) -> Lab:
    lab = make_lab(managers=3, workers=3, swarm=True)
    load_busybox_everywhere(lab, tmp_path, chaos.IMAGE)
    set_heartbeat(lab, "manager-1", 1)  # failures detected within ~3 s
    return lab


def converge(lab: Lab, seed: int, since: float, after: str) -> float:
    took, left, trail = chaos.wait_converged(lab, since, GIVE_UP)
    print(f"seed {seed}: converged {took:.1f}s after {after}" if not left else
          f"seed {seed}: NOT converged {took:.1f}s after {after}: {left}", flush=True)
    if took > 2 or left:  # what took the time
        print("    " + "\n    ".join(trail[-8:]), flush=True)
    assert not left, f"seed {seed}: not converged {took:.0f}s after {after}: {left}; along the way: {trail[-8:]}"
    return took


def run_chaos(lab: Lab, seed: int, seconds: float) -> list[float]:
    """Episodes for `seconds`, then the final checks; returns the convergence times."""
    print(f"\nchaos seed {seed} (replay: SHOAL_CHAOS_SEED={seed})", flush=True)
    chaos.clear(lab, seed)
    nemesis, driver = chaos.Nemesis(lab, seed), chaos.Driver(lab, seed)
    times: list[float] = []
    end = time.monotonic() + seconds
    driver.start()
    try:
        for _ in range(200):
            if time.monotonic() > end:
                break
            what = nemesis.episode()
            undone = time.monotonic()
            driver.pause()
            paused = time.monotonic() - undone  # the driver's operation in flight at the undo ends first
            if paused > 2:
                print(f"    the driver's last steps: {driver.log[-6:]}", flush=True)
            assert driver.error is None, f"seed {seed}: the driver failed: {driver.error!r}"
            times.append(converge(lab, seed, undone, f"{what} (driver paused {paused:.1f}s after)"))
            chaos.check_acknowledged(lab, driver.ledger, seed)
            driver.resume()
    finally:
        driver.stop()
    assert driver.error is None, f"seed {seed}: the driver failed: {driver.error!r}"
    times.append(converge(lab, seed, time.monotonic(), "the end"))
    chaos.check_acknowledged(lab, driver.ledger, seed)
    print(f"seed {seed}: {len(nemesis.history)} faults, {driver.ledger.acks} acknowledged changes, "
          f"{driver.ledger.unknown} attempts of unknown outcome; convergence after each undo: "
          f"{', '.join(f'{t:.1f}' for t in times)} s (max {max(times):.1f} s)", flush=True)
    slow = [(what, t) for what, t in zip(nemesis.history, times, strict=False) if t > CONVERGE_BOUND]
    assert not slow, f"seed {seed}: converged later than {CONVERGE_BOUND:.0f}s after: {slow}"
    return times


def test_chaos_two_minutes(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = chaos_lab(make_lab, tmp_path)
    run_chaos(lab, seeds(1)[0], seconds=90)


@pytest.mark.slow
def test_chaos_three_seeds(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = chaos_lab(make_lab, tmp_path)
    for seed in seeds(3):
        run_chaos(lab, seed, seconds=240)


def test_a_restarted_worker_removes_the_containers_of_tasks_gone_meanwhile(make_lab: Callable[..., Lab],
                                                                             tmp_path: Path) -> None:
    """Found by the chaos test (seed 221901): a worker's daemon stops (its containers live on), it is
    marked down and the service is removed meanwhile, the daemon starts again; the complete assignment set lacks
    the task, and its container used to run on with no task."""
    lab = make_lab(managers=1, workers=1, swarm=True)
    load_busybox_everywhere(lab, tmp_path, chaos.IMAGE)
    set_heartbeat(lab, "manager-1", 1)
    spec = chaos.spec_for("leftover", 1, ("GEN=0",))
    spec["TaskTemplate"]["Placement"] = {"Constraints": ["node.hostname==worker-1"]}
    chaos.call(lab, "manager-1", "POST", "/services/create", spec)
    eventually(lambda: chaos.runc_running(lab, "worker-1"), what="the task's container on worker-1")
    lab.stop("worker-1")
    eventually(lambda: chaos.call(lab, "manager-1", "GET", "/nodes/worker-1")["Status"]["State"] == "down",
               what="worker-1 to be marked down")
    chaos.call(lab, "manager-1", "DELETE", "/services/leftover")
    lab.start("worker-1")
    eventually(lambda: not chaos.runc_running(lab, "worker-1"), timeout=15,
               what="worker-1 to remove the container of the removed service's task")
