"""The secrets and configs a worker holds for its tasks, by ID, in memory only.

Theory of operation: the dispatcher sends the data of a secret or config only to the node of a
task that refers to it, in the same assignment message as the task (`"secrets"`/`"configs"`:
ID → base64 data). The agent `add`s it before it hands the message's tasks to their runners,
so a task's data is here by the time its container is prepared. It leaves again when no task
of this node needs it any more:
  - each task that refers to data is `bind`-ed on assignment and `release`-d once its runner
    has ended (its container removed); data no bound task refers to is dropped then;
  - a complete set of assignments replaces the lot: data not sent in it is dropped
    (`begin_complete_set` / `end_complete_set`), so what a missed removal left cannot linger.
The data never changes (an update of a secret or config can only change its labels), so the
copy a task brought is the copy it keeps. `files_for(task)` turns a task's references into the
executor's injected files; a reference whose data is missing raises `MissingDependency`
naming it, so the task is rejected instead of started without it. Tasks without references
cost one look at their spec.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Protocol

from model.references import references
from worker.executor.spec import ConfigError, InjectedFile
from worker.executor.taskspec import MissingDependency, resolve_injected_files

__all__ = ["Dependencies", "MissingDependency", "references"]

KINDS = ("secret", "config")


class TaskLike(Protocol):
    id: str
    spec: dict[str, Any]


class Dependencies:
    def __init__(self) -> None:
        self._data: dict[tuple[str, str], bytes] = {}
        self._users: dict[tuple[str, str], set[str]] = {}      # (kind, ID) → bound task IDs
        self._bound: dict[str, frozenset[tuple[str, str]]] = {}  # task ID → its references
        self._complete_set: set[tuple[str, str]] | None = None  # received since a complete set began

    # ---- filled from assignment messages ----------------------------------------------------
    def add(self, secrets: Mapping[str, str] | None, configs: Mapping[str, str] | None) -> list[str]:
        """Keep the data of an assignment message (ID → base64). Items that are not base64 are
        skipped (a task needing one is then rejected as missing it); their problems returned."""
        problems = []
        for kind, items in (("secret", secrets), ("config", configs)):
            for obj_id, encoded in (items or {}).items():
                try:
                    data = base64.b64decode(encoded, validate=True)
                except (binascii.Error, TypeError, ValueError) as e:
                    problems.append(f"{kind} {obj_id}: data is not base64: {e}")
                    continue
                key = (kind, str(obj_id))
                self._data[key] = data
                if self._complete_set is not None:
                    self._complete_set.add(key)
        return problems

    def begin_complete_set(self) -> None:
        """A complete set starts arriving: note what it brings (idempotent until it ends)."""
        if self._complete_set is None:
            self._complete_set = set()

    def end_complete_set(self) -> None:
        """The complete set is in: drop every item it did not bring."""
        kept = self._complete_set or set()
        self._complete_set = None
        for key in [k for k in self._data if k not in kept]:
            del self._data[key]

    # ---- the tasks that need them ------------------------------------------------------------
    def bind(self, task: TaskLike) -> None:
        """`task` (assigned to this node) needs its references until `release(task.id)`."""
        refs = references(task.spec)
        if not refs or task.id in self._bound:
            return
        self._bound[task.id] = refs
        for key in refs:
            self._users.setdefault(key, set()).add(task.id)

    def release(self, task_id: str) -> None:
        """The task is gone from this node: drop the data no other task refers to."""
        for key in self._bound.pop(task_id, ()):
            users = self._users.get(key)
            if users is not None:
                users.discard(task_id)
                if not users:
                    del self._users[key]
                    self._data.pop(key, None)

    # ---- reading -----------------------------------------------------------------------------
    def get(self, kind: str, obj_id: str) -> bytes | None:
        if kind not in KINDS:
            raise ValueError(f"unknown dependency kind {kind!r} (one of {', '.join(KINDS)})")
        return self._data.get((kind, obj_id))

    def held(self) -> set[tuple[str, str]]:
        """The (kind, ID) pairs whose data this node holds now."""
        return set(self._data)

    def files_for(self, task: TaskLike) -> list[InjectedFile]:
        """The task's secrets and configs as files for its container. Raises `MissingDependency`
        (a ConfigError) for data this node was not sent, ConfigError for a bad reference."""
        spec = task.spec.get("ContainerSpec") or {}
        if not isinstance(spec, dict):
            raise ConfigError("ContainerSpec must be an object")
        return resolve_injected_files(spec, lambda kind, obj_id, _name: self.get(kind, obj_id))

