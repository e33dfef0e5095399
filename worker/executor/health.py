"""Health checks: a probe command run inside the container on an interval.

Theory of operation: `HealthTracker` is the pure core. It takes each probe's outcome and the
elapsed time since start, and moves the status starting → healthy/unhealthy: a success makes
the container healthy at once; failures count only after the start period, and `retries`
consecutive counted failures make it unhealthy (a later success heals it). `HealthMonitor` is
the I/O loop around it: it runs the probe with `runc exec` under the check's timeout every
interval and returns as soon as the container is unhealthy, so the task's controller can fail
the task and let the restart policy apply. `on_change` hears each change of status after a probe
(dockerd's `health_status: healthy|unhealthy` container events). With a `record` path the monitor
keeps the tracker's last state there (each probe, each reset) and starts from it, so a container's
inspect still shows its last State.Health once nothing probes it any more (stopped), as dockerd's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from worker.executor.spec import Healthcheck

STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"
MAX_LOG_ENTRIES = 5
MAX_OUTPUT = 4096

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeResult:
    start: str
    end: str
    exit_code: int
    output: str


@dataclass
class HealthTracker:
    check: Healthcheck
    status: str = STARTING
    failing_streak: int = 0
    log: deque[ProbeResult] = field(default_factory=lambda: deque(maxlen=MAX_LOG_ENTRIES))

    def record(self, result: ProbeResult, elapsed: float) -> str:
        """Account one probe `elapsed` seconds after the container started; the new status."""
        self.log.append(result)
        if result.exit_code == 0:
            self.failing_streak = 0
            self.status = HEALTHY
        elif elapsed >= self.check.start_period or self.status != STARTING:
            self.failing_streak += 1
            if self.failing_streak >= max(1, self.check.retries):
                self.status = UNHEALTHY
        return self.status

    def to_engine(self) -> dict[str, Any]:
        """The `State.Health` object of the Engine API."""
        return {
            "Status": self.status,
            "FailingStreak": self.failing_streak,
            "Log": [{"Start": r.start, "End": r.end, "ExitCode": r.exit_code, "Output": r.output}
                    for r in self.log],
        }


def load_tracker(path: Path, check: Healthcheck) -> HealthTracker:
    """The tracker kept at `path` (to_engine's shape); a fresh one if none or unreadable."""
    tracker = HealthTracker(check)
    try:
        doc = json.loads(path.read_text())
        status, streak = doc["Status"], int(doc["FailingStreak"])
        entries = [ProbeResult(str(e["Start"]), str(e["End"]), int(e["ExitCode"]), str(e["Output"]))
                   for e in doc["Log"]]
    except FileNotFoundError:
        return tracker
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("health record %s unreadable (%s): from starting", path, e)
        return tracker
    if status in (STARTING, HEALTHY, UNHEALTHY):
        tracker.status, tracker.failing_streak = status, streak
        tracker.log.extend(entries)
    return tracker


class ProbeRunner(Protocol):
    async def exec(self, cid: str, argv: list[str], timeout: float) -> tuple[int, str]: ...


def _stamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class HealthMonitor:
    def __init__(self, runner: ProbeRunner, cid: str, check: Healthcheck, record: Path | None = None) -> None:
        self.runner = runner
        self.cid = cid
        self.record = record
        self.tracker = load_tracker(record, check) if record is not None else HealthTracker(check)
        self.on_change: Callable[[str], None] | None = None

    def reset(self) -> None:
        """Back to "starting" with no log: a new run of the container."""
        self.tracker = HealthTracker(self.tracker.check)
        self._keep()

    def _keep(self) -> None:
        if self.record is None:
            return
        tmp = self.record.with_name(self.record.name + ".tmp")
        try:    # a few KB on the run tmpfs, once a probe
            tmp.write_text(json.dumps(self.tracker.to_engine()))
            os.replace(tmp, self.record)
        except FileNotFoundError:
            pass        # the container's state directory is gone (removed) or not made yet

    @property
    def status(self) -> str:
        return self.tracker.status

    async def probe_once(self) -> ProbeResult:
        check = self.tracker.check
        start = _stamp()
        try:
            code, output = await self.runner.exec(self.cid, check.test, check.timeout)
        except TimeoutError:
            code, output = -1, f"Health check exceeded timeout ({check.timeout}s)"
        except Exception as e:  # the probe could not run at all: that is a failed probe
            code, output = -1, f"health check could not run: {e}"
        return ProbeResult(start, _stamp(), code, output[-MAX_OUTPUT:])

    async def run_until_unhealthy(
            self, still_running: Callable[[], Awaitable[bool]]) -> HealthTracker | None:
        """Probe every interval; the tracker once the status is unhealthy, or None when a probe
        failed because the container itself stopped (its exit, not its health, then counts)."""
        return await self.run_until(still_running, {UNHEALTHY})

    async def run_until(self, still_running: Callable[[], Awaitable[bool]],
                        statuses: set[str]) -> HealthTracker | None:
        """Probe every interval until the status is one of `statuses` (the tracker), or a probe
        failed because the container itself stopped (None)."""
        check = self.tracker.check
        started = time.monotonic()
        while True:
            await asyncio.sleep(check.interval)    # the check's schedule, not synchronisation
            result = await self.probe_once()
            if result.exit_code != 0 and not await still_running():
                return None
            before = self.tracker.status
            after = self.tracker.record(result, time.monotonic() - started)
            self._keep()
            if after != before and self.on_change is not None:
                self.on_change(after)
            if after in statuses:
                return self.tracker
