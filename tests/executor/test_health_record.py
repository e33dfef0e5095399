"""A health monitor keeps its tracker's last state in the container's record (`health.json`), so a
new monitor (the old one dropped once nothing probes a stopped container) starts from it; a reset
(a new run) writes "starting"; an unreadable record is a fresh start."""

from __future__ import annotations

import json
from pathlib import Path

from worker.executor.health import HEALTHY, STARTING, UNHEALTHY, HealthMonitor
from worker.executor.spec import Healthcheck

CHECK = Healthcheck(test=["true"], interval=0.01, timeout=1.0, retries=1)


class Probes:
    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)

    async def exec(self, cid: str, argv: list[str], timeout: float) -> tuple[int, str]:
        code = self.codes.pop(0)
        return code, f"exit {code}\n"


async def still_running() -> bool:
    return True


async def test_the_last_state_outlives_the_monitor(tmp_path: Path) -> None:
    record = tmp_path / "health.json"
    first = HealthMonitor(Probes(0, 1), "c1", CHECK, record)
    assert first.status == STARTING and not record.exists()
    await first.run_until(still_running, {HEALTHY})
    await first.run_until(still_running, {UNHEALTHY})
    kept = json.loads(record.read_text())
    assert kept["Status"] == UNHEALTHY and kept["FailingStreak"] == 1
    assert [e["ExitCode"] for e in kept["Log"]] == [0, 1]

    again = HealthMonitor(Probes(), "c1", CHECK, record)          # what an inspect makes later
    assert again.tracker.to_engine() == kept
    again.reset()                                                  # a new run of the container
    assert json.loads(record.read_text()) == {"Status": STARTING, "FailingStreak": 0, "Log": []}


def test_an_unreadable_or_missing_record_starts_from_starting(tmp_path: Path) -> None:
    record = tmp_path / "health.json"
    record.write_text("{not json")
    assert HealthMonitor(Probes(), "c1", CHECK, record).status == STARTING
    record.write_text(json.dumps({"Status": "bogus", "FailingStreak": 0, "Log": []}))
    assert HealthMonitor(Probes(), "c1", CHECK, record).status == STARTING
    gone = tmp_path / "removed" / "health.json"                    # the container's directory is gone
    monitor = HealthMonitor(Probes(), "c1", CHECK, gone)
    monitor.reset()
    assert monitor.status == STARTING and not gone.exists()
