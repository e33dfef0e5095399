"""Seeded deterministic simulations of a 5-7 node Raft cluster under faults (see simulator.py).

SHOAL_SIM_SEEDS=N runs seeds 0..N-1 (default 250); SHOAL_SIM_SEED=K runs only seed K.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.simulator import Simulation

DEFAULT_SEEDS = 250


def _seeds() -> list[int]:
    if os.environ.get("SHOAL_SIM_SEED"):
        return [int(os.environ["SHOAL_SIM_SEED"])]
    return list(range(int(os.environ.get("SHOAL_SIM_SEEDS", DEFAULT_SEEDS))))


@pytest.mark.parametrize("seed", _seeds())
def test_simulation_seed(seed: int) -> None:
    sim = Simulation(seed)
    try:
        sim.run()
    except Exception as exc:
        replay = f"SHOAL_SIM_SEED={seed} .venv/bin/python -m pytest tests/sim -q"
        raise AssertionError(f"seed {seed} failed at tick {sim.now}: {exc}\n  faults: {sim.faults}\n"
                             f"  replay: {replay}") from exc
    # The run must have exercised the system, not idled through it.
    assert sim.stats["puts_ok"] > 0 and sim.stats["gets_ok"] > 0, sim.stats
