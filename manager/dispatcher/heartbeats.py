"""Heartbeat deadlines of the nodes, and which have passed (pure: the caller passes `now`).

Theory of operation: every node has a deadline (its last heartbeat plus the grace). The
dispatcher's monitor calls `expired(now)` every `interval` seconds. If that call comes late by
Δ, the manager itself was not running (its event loop stalled on a big write, or the host was
busy), so heartbeats that did arrive could not be processed either: every deadline moves Δ
later before any is checked. A stalled leader therefore never marks healthy nodes down; a node
that is really gone is still caught, Δ later.
"""

from __future__ import annotations


class HeartbeatDeadlines:
    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"monitor interval must be > 0, not {interval}")
        self.interval = interval
        self.deadlines: dict[str, float] = {}  # node_id -> when it is declared down
        self.stalled_s = 0.0  # total time deadlines were moved for the monitor's own lateness
        self._last_check: float | None = None

    def start(self, now: float) -> None:
        """The monitor starts: its first check is due at `now + interval`."""
        self._last_check = now

    def expired(self, now: float) -> list[str]:
        """Nodes whose deadline has passed (they are forgotten here), after moving every deadline
        by how late this check is."""
        if self._last_check is not None:
            late = now - self._last_check - self.interval
            if late > 0:
                self.stalled_s += late
                for node_id in self.deadlines:
                    self.deadlines[node_id] += late
        self._last_check = now
        gone = [node_id for node_id, deadline in self.deadlines.items() if now >= deadline]
        for node_id in gone:
            del self.deadlines[node_id]
        return gone
