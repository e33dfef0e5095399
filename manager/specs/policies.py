"""The effective restart policy and update config of a spec, defaults applied (for the loops)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from manager.specs.constraints import Constraint, parse_constraint


def _seconds(nanos: float) -> float:
    return nanos / 1e9


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    condition: str = "any"  # none | on-failure | any
    delay: float = 5.0  # seconds
    max_attempts: int = 0  # 0 = unlimited
    window: float = 0.0  # seconds; 0 = the attempts count forever


def restart_policy(task_spec: dict[str, Any]) -> RestartPolicy:
    raw = task_spec.get("RestartPolicy") or {}
    return RestartPolicy(
        condition=raw.get("Condition") or "any",
        delay=_seconds(raw["Delay"]) if raw.get("Delay") is not None else 5.0,
        max_attempts=int(raw.get("MaxAttempts") or 0),
        window=_seconds(raw.get("Window") or 0),
    )


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    parallelism: int = 1  # 0 = all at once
    delay: float = 0.0
    failure_action: str = "pause"  # pause | continue | rollback
    monitor: float = 5.0
    max_failure_ratio: float = 0.0
    order: str = "stop-first"  # stop-first | start-first


def update_config(service_spec: dict[str, Any], rollback: bool = False) -> UpdateConfig:
    raw = service_spec.get("RollbackConfig" if rollback else "UpdateConfig")
    if raw is None:
        return UpdateConfig()
    return UpdateConfig(
        parallelism=int(raw.get("Parallelism") or 0),
        delay=_seconds(raw.get("Delay") or 0),
        failure_action=raw.get("FailureAction") or "pause",
        monitor=_seconds(raw["Monitor"]) if raw.get("Monitor") is not None else 5.0,
        max_failure_ratio=float(raw.get("MaxFailureRatio") or 0),
        order=raw.get("Order") or "stop-first",
    )


def placement_constraints(task_spec: dict[str, Any]) -> list[Constraint]:
    return [parse_constraint(c) for c in ((task_spec.get("Placement") or {}).get("Constraints") or [])]
