"""The long sweep: 20,000 simulation seeds in parallel processes (slow; run with `--slow`).

SHOAL_SIM_SWEEP=START:STOP picks another range (default 0:20000), SHOAL_SIM_WORKERS the number of
processes (default: one per core). Seeds 0-19999 took 48 minutes on 2 cores. The same sweep from a
shell, with progress: `.venv/bin/python -m tests.sim.sweep 0 20000`.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.sweep import sweep

DEFAULT_RANGE = "0:20000"


@pytest.mark.slow
def test_sweep_of_twenty_thousand_seeds() -> None:
    first, stop = (int(x) for x in os.environ.get("SHOAL_SIM_SWEEP", DEFAULT_RANGE).split(":"))
    workers = int(os.environ["SHOAL_SIM_WORKERS"]) if os.environ.get("SHOAL_SIM_WORKERS") else None
    result = sweep(range(first, stop), workers)
    assert not result.failures, result.describe(first, stop)
