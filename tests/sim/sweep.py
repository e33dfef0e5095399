"""Run many simulation seeds in parallel processes and report the ones that fail.

    .venv/bin/python -m tests.sim.sweep 0 20000            # seeds 0..19999, one process per core
    .venv/bin/python -m tests.sim.sweep 20000 40000 -j 4   # another range, four processes

Prints progress, then the seed range, the time taken and every failure with the command that
replays it; exits 1 if any seed failed. The same sweep runs as a slow test (tests/sim/test_sweep.py,
`--slow`). Each seed is independent and deterministic, so the verdict does not depend on the number
of processes or on the order in which seeds finish.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from tests.sim.simulator import run_seed


@dataclass
class SweepResult:
    seeds: int = 0
    failures: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self, first: int, stop: int) -> str:
        head = (f"seeds {first}-{stop - 1}: {self.seeds} run, {len(self.failures)} failed,"
                f" {self.seconds:.0f} s")
        return "\n".join([head, *(f"  {seed}: {msg}" for seed, msg in sorted(self.failures.items()))])


def check_seed(seed: int) -> tuple[int, str | None]:
    """Run one seed; (seed, None) if it passed, else (seed, the failure with its replay command)."""
    try:
        run_seed(seed)
    except Exception as exc:
        return seed, f"{type(exc).__name__}: {exc}"
    return seed, None


def sweep(seeds: Iterable[int], workers: int | None = None,
          progress: Callable[[int, int, str | None], None] | None = None) -> SweepResult:
    """Run `seeds` in `workers` processes (default: one per core). `progress(done, failed, failure)`
    is called after each seed, with that seed's failure if it failed."""
    todo = list(seeds)
    result = SweepResult()
    started = time.monotonic()
    # spawn: each worker starts clean, whatever threads or event loops the caller has.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers or os.cpu_count() or 1, mp_context=ctx) as pool:
        for seed, failure in pool.map(check_seed, todo, chunksize=25):
            result.seeds += 1
            if failure is not None:
                result.failures[seed] = failure
            if progress is not None:
                progress(result.seeds, len(result.failures), failure)
    result.seconds = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("start", type=int, help="first seed (or the stop seed if it is the only number)")
    parser.add_argument("stop", type=int, nargs="?", help="one past the last seed")
    parser.add_argument("-j", "--workers", type=int, default=None, help="processes (default: one per core)")
    args = parser.parse_args(argv)
    first, stop = (0, args.start) if args.stop is None else (args.start, args.stop)
    total = stop - first
    step = max(1, total // 20)

    def progress(done: int, failed: int, failure: str | None) -> None:
        if failure is not None:
            print(failure.splitlines()[0][:300], file=sys.stderr, flush=True)
        if done % step == 0 or done == total:
            print(f"{done}/{total} seeds, {failed} failed", file=sys.stderr, flush=True)

    result = sweep(range(first, stop), args.workers, progress)
    print(result.describe(first, stop))
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
