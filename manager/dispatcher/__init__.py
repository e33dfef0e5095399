"""The dispatcher: agent sessions, heartbeats, assignments and task status from workers."""

from manager.dispatcher.dispatcher import (
    DEFAULT_HEARTBEAT_PERIOD,
    GRACE_MULTIPLIER,
    Dispatcher,
    heartbeat_period_of,
)

__all__ = ["DEFAULT_HEARTBEAT_PERIOD", "GRACE_MULTIPLIER", "Dispatcher", "heartbeat_period_of"]
