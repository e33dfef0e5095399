"""The in-memory tables and their indexes, and the read-only transaction over them.

Invariant: `MemoryTables` changes only through `put`/`remove`, which keep the name index
(lower-cased names) and the task indexes (by service, by node) in step with the objects.
Empty keys are not indexed (most tasks wait unassigned with node ID ""); a lookup of an
empty key scans instead.
Objects held here are shared with readers and must never be mutated in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from manager.store.errors import AmbiguousRef, NotFound
from model import KIND_WORDS, OBJECT_TYPES, StoreObject, Task

TABLES = tuple(OBJECT_TYPES)


class Table:
    def __init__(self, name: str) -> None:
        self.name = name
        self.objects: dict[str, StoreObject] = {}
        self.by_name: dict[str, set[str]] = {}
        self.by_service: dict[str, set[str]] = {}
        self.by_node: dict[str, set[str]] = {}

    def put(self, obj: StoreObject) -> None:
        self.replace(obj, self.objects.get(obj.id))

    def replace(self, obj: StoreObject, old: StoreObject | None) -> None:
        """`put` when the caller already holds `old`, the object stored under `obj.id` (or None)."""
        if isinstance(obj, Task):  # tasks have no name; most updates keep service and node
            self.objects[obj.id] = obj
            if isinstance(old, Task):
                if old.service_id != obj.service_id:
                    if old.service_id:
                        _discard(self.by_service, old.service_id, obj.id)
                    if obj.service_id:
                        self.by_service.setdefault(obj.service_id, set()).add(obj.id)
                if old.node_id != obj.node_id:
                    if old.node_id:
                        _discard(self.by_node, old.node_id, obj.id)
                    if obj.node_id:
                        self.by_node.setdefault(obj.node_id, set()).add(obj.id)
                return
            if old is not None:
                self._unindex(old)
            if obj.service_id:
                self.by_service.setdefault(obj.service_id, set()).add(obj.id)
            if obj.node_id:
                self.by_node.setdefault(obj.node_id, set()).add(obj.id)
            return
        if old is not None:
            self._unindex(old)
        self.objects[obj.id] = obj
        if obj.name:
            self.by_name.setdefault(obj.name.lower(), set()).add(obj.id)

    def remove(self, obj_id: str) -> StoreObject | None:
        old = self.objects.pop(obj_id, None)
        if old is not None:
            self._unindex(old)
        return old

    def _unindex(self, obj: StoreObject) -> None:
        if obj.name:
            _discard(self.by_name, obj.name.lower(), obj.id)
        if isinstance(obj, Task):
            if obj.service_id:
                _discard(self.by_service, obj.service_id, obj.id)
            if obj.node_id:
                _discard(self.by_node, obj.node_id, obj.id)


def _discard(index: dict[str, set[str]], key: str, obj_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(obj_id)
        if not ids:
            del index[key]


class MemoryTables:
    def __init__(self) -> None:
        self.tables: dict[str, Table] = {name: Table(name) for name in TABLES}
        self.index = 0  # the store index of the last applied entry

    def table(self, name: str) -> Table:
        try:
            return self.tables[name]
        except KeyError:
            raise ValueError(f"unknown table {name!r} (tables: {', '.join(TABLES)})") from None


Predicate = Callable[[Any], bool]


def matches(obj: StoreObject, *, name: str | None, name_prefix: str | None, id_prefix: str | None,
            service_id: str | None, node_id: str | None, slot: int | None, where: Predicate | None) -> bool:
    if name is not None and obj.name.lower() != name.lower():
        return False
    if name_prefix is not None and not obj.name.startswith(name_prefix):
        return False
    if id_prefix is not None and not obj.id.startswith(id_prefix):
        return False
    if isinstance(obj, Task):
        if service_id is not None and obj.service_id != service_id:
            return False
        if node_id is not None and obj.node_id != node_id:
            return False
        if slot is not None and obj.slot != slot:
            return False
    return where is None or bool(where(obj))


class ReadTx:
    """A read-only view of the committed state. Returned objects are shared: do not mutate."""

    def __init__(self, memory: MemoryTables) -> None:
        self._memory = memory

    @property
    def index(self) -> int:
        return self._memory.index

    def get(self, table: str, obj_id: str) -> Any:
        try:
            return self._memory.tables[table].objects.get(obj_id)
        except KeyError:
            return self._memory.table(table).objects.get(obj_id)  # raises the clear error

    def _candidates(self, table: str, name: str | None, service_id: str | None,
                    node_id: str | None) -> Iterable[StoreObject]:
        t = self._memory.table(table)
        if name is not None:
            return [t.objects[i] for i in t.by_name.get(name.lower(), ())]
        if service_id and table == "tasks":
            return [t.objects[i] for i in t.by_service.get(service_id, ())]
        if node_id and table == "tasks":
            return [t.objects[i] for i in t.by_node.get(node_id, ())]
        return t.objects.values()

    def find(self, table: str, *, name: str | None = None, name_prefix: str | None = None,
             id_prefix: str | None = None, service_id: str | None = None, node_id: str | None = None,
             slot: int | None = None, where: Predicate | None = None) -> list[Any]:
        """Objects matching every given criterion (name: exact, case-insensitive)."""
        if name is None and name_prefix is None and id_prefix is None and slot is None and where is None:
            if service_id is None and node_id is None:
                return list(self._memory.table(table).objects.values())
            if table == "tasks" and ((service_id and node_id is None) or (node_id and service_id is None)):
                return list(self._candidates(table, None, service_id, node_id))  # the index answers exactly
        return [o for o in self._candidates(table, name, service_id, node_id)
                if matches(o, name=name, name_prefix=name_prefix, id_prefix=id_prefix,
                           service_id=service_id, node_id=node_id, slot=slot, where=where)]

    def all(self, table: str) -> list[Any]:
        return self.find(table)

    def lookup(self, table: str, ref: str) -> Any:
        """Engine API `{ref}`: exact ID, then exact name, then a unique ID prefix."""
        kind = KIND_WORDS[table]
        obj = self.get(table, ref)
        if obj is not None:
            return obj
        named = [o for o in self.find(table, name=ref) if o.name == ref] if ref else []
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise AmbiguousRef(f"{kind} {ref} is ambiguous ({len(named)} matches found)")
        prefixed = self.find(table, id_prefix=ref) if ref else []
        if len(prefixed) == 1:
            return prefixed[0]
        if len(prefixed) > 1:
            raise AmbiguousRef(f"{kind} {ref} is ambiguous ({len(prefixed)} matches found)")
        raise NotFound(f"{kind} {ref} not found")
