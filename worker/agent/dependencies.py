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
cost one look at their spec. A templated secret or config (its entry {"Data", "Templating"})
is rendered for each task as its file is made (worker.executor.templating, with the task, this
node and the task's other secrets and configs by target); a bad template fails the task.
"""

from __future__ import annotations

import base64
import binascii
import platform
import socket
from collections.abc import Mapping
from typing import Any, Protocol

from model.references import references
from worker.executor.spec import ConfigError, InjectedFile
from worker.executor.taskspec import MissingDependency, resolve_injected_files
from worker.executor.templating import DRIVER, TemplateContext, TemplateError, render

__all__ = ["Dependencies", "MissingDependency", "references"]

KINDS = ("secret", "config")


class TaskLike(Protocol):
    id: str
    spec: dict[str, Any]


def _attr(task: Any, name: str, default: Any = "") -> Any:
    return getattr(task, name, default)


class Dependencies:
    def __init__(self, hostname: str = "") -> None:
        self.hostname = hostname or socket.gethostname()      # `.Node.Hostname` in templates
        self._templating: dict[tuple[str, str], str] = {}     # (kind, ID) → template driver
        self._data: dict[tuple[str, str], bytes] = {}
        self._users: dict[tuple[str, str], set[str]] = {}      # (kind, ID) → bound task IDs
        self._bound: dict[str, frozenset[tuple[str, str]]] = {}  # task ID → its references
        self._complete_set: set[tuple[str, str]] | None = None  # received since a complete set began

    # ---- filled from assignment messages ----------------------------------------------------
    def add(self, secrets: Mapping[str, Any] | None, configs: Mapping[str, Any] | None) -> list[str]:
        """Keep the data of an assignment message (ID → base64, or {"Data": base64, "Templating":
        {"Name": driver}} for a templated one). Items that are not base64 are skipped (a task
        needing one is then rejected as missing it); their problems returned."""
        problems = []
        for kind, items in (("secret", secrets), ("config", configs)):
            for obj_id, entry in (items or {}).items():
                encoded, driver = entry, None
                if isinstance(entry, dict):
                    encoded = entry.get("Data") or ""
                    driver = str((entry.get("Templating") or {}).get("Name") or "")
                try:
                    data = base64.b64decode(encoded, validate=True)
                except (binascii.Error, TypeError, ValueError) as e:
                    problems.append(f"{kind} {obj_id}: data is not base64: {e}")
                    continue
                key = (kind, str(obj_id))
                self._data[key] = data
                if driver is not None:
                    self._templating[key] = driver
                else:
                    self._templating.pop(key, None)
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
            self._templating.pop(key, None)

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
                    self._templating.pop(key, None)

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
        return resolve_injected_files(spec, lambda kind, obj_id, name: self._rendered(task, spec, kind, obj_id, name))

    def _rendered(self, task: TaskLike, spec: dict[str, Any], kind: str, obj_id: str, ref_name: str) -> bytes | None:
        data = self.get(kind, obj_id)
        driver = self._templating.get((kind, obj_id))
        if data is None or driver is None:
            return data
        if driver != DRIVER:
            raise TemplateError(f"{kind} {ref_name or obj_id}: unknown template driver {driver!r} (only {DRIVER!r})")

        def by_target(of_kind: str) -> Any:
            key, id_key = ("Secrets", "SecretID") if of_kind == "secret" else ("Configs", "ConfigID")

            def get(target: str) -> bytes | None:
                for ref in spec.get(key) or []:
                    if isinstance(ref, dict) and str((ref.get("File") or {}).get("Name") or "") == target:
                        return self.get(of_kind, str(ref.get(id_key) or ""))
                return None
            return get

        slot = _attr(task, "slot", 0)
        node_id = _attr(task, "node_id")
        name = f"{_attr(task, 'service_name')}.{slot or node_id}.{task.id}"
        env = spec.get("Env")
        ctx = TemplateContext(
            service_id=_attr(task, "service_id"), service_name=_attr(task, "service_name"),
            service_labels=dict(_attr(task, "labels", None) or {}), node_id=node_id, node_hostname=self.hostname,
            node_os=platform.system().lower(), node_arch=platform.machine(), task_id=task.id, task_name=name,
            task_slot=str(slot), env=[str(e) for e in env] if isinstance(env, list) else [])
        try:
            return render(data, ctx, secret=by_target("secret"), config=by_target("config"))
        except TemplateError as e:
            raise TemplateError(f"{kind} {ref_name or obj_id}: {e}") from None

