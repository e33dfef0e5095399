"""Write transactions: changes collected over the committed state, then encoded for Raft.

A `WriteTx` reads through its own pending changes, then a parent's (a batch's earlier
transactions), then the committed tables. Writes are checked at once (stale version, name
conflict, missing object) so callers get the error where they made it; the same checks are
repeated deterministically when the entry is applied, so every replica accepts or rejects
the same entries. Several writes to one object within a proposal collapse into one change
that carries the version the writer first read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from manager.store.errors import NameConflict, NotFound, ObjectExists, StaleVersion
from manager.store.memory import MemoryTables, Predicate, ReadTx, matches
from model import KIND_WORDS, OBJECT_TYPES, UNIQUE_NAME_TABLES, StoreObject

CREATE, UPDATE, DELETE = "create", "update", "delete"


@dataclass(slots=True)
class Change:
    op: str
    table: str
    expected_version: int  # the version the writer read (0 for create)
    obj: StoreObject  # for delete: the object as it was

    def to_wire(self) -> list[Any]:
        rec = self.obj.to_record() if self.op != DELETE else {"id": self.obj.id}
        return [self.op, self.table, self.expected_version, rec]

    @staticmethod
    def from_wire(wire: list[Any], memory: MemoryTables) -> Change:
        op, table, expected, rec = wire
        if op == DELETE:
            obj = memory.table(table).objects.get(rec["id"])
            if obj is None:  # precondition fails at apply; keep a placeholder
                obj = OBJECT_TYPES[table](id=rec["id"])
        else:
            obj = OBJECT_TYPES[table].from_record(rec)
        return Change(op, table, expected, obj)


Key = tuple[str, str]


def merge_change(changes: dict[Key, Change], change: Change) -> None:
    """Fold `change` into `changes`, collapsing writes to the same object."""
    key = (change.table, change.obj.id)
    prior = changes.get(key)
    if prior is None:
        changes[key] = change
        return
    if prior.op == CREATE:
        if change.op == DELETE:
            del changes[key]
        else:
            changes[key] = Change(CREATE, change.table, 0, change.obj)
    elif prior.op == UPDATE:
        changes[key] = Change(change.op, change.table, prior.expected_version, change.obj)
    else:
        raise ObjectExists(f"{KIND_WORDS[change.table]} {change.obj.id} was deleted in this transaction")


class WriteTx(ReadTx):
    """Reads see this transaction's own writes. Objects passed to create/update are taken
    over by the transaction: do not modify them afterwards."""

    def __init__(self, memory: MemoryTables, now: str, parent: dict[Key, Change] | None = None) -> None:
        self._memory = memory
        self.now = now
        self.changes: dict[Key, Change] = {}
        self._parent = parent if parent is not None else {}

    def get(self, table: str, obj_id: str) -> Any:
        key = (table, obj_id)
        pending = self.changes.get(key) or self._parent.get(key)
        if pending is not None:
            return None if pending.op == DELETE else pending.obj
        try:
            return self._memory.tables[table].objects.get(obj_id)
        except KeyError:
            return super().get(table, obj_id)  # raises the clear error

    def find(self, table: str, *, name: str | None = None, name_prefix: str | None = None,
             id_prefix: str | None = None, service_id: str | None = None, node_id: str | None = None,
             slot: int | None = None, where: Predicate | None = None) -> list[Any]:
        criteria = dict(name=name, name_prefix=name_prefix, id_prefix=id_prefix, service_id=service_id,
                        node_id=node_id, slot=slot, where=where)
        pending = {c.obj.id: c for c in self._parent.values() if c.table == table}
        pending.update({c.obj.id: c for c in self.changes.values() if c.table == table})
        if not pending:
            return super().find(table, **criteria)  # type: ignore[arg-type]
        found = [o for o in super().find(table, **criteria) if o.id not in pending]  # type: ignore[arg-type]
        if table == "tasks" and service_id is not None and name is None and name_prefix is None \
                and id_prefix is None and node_id is None and slot is None and where is None:
            # a service's tasks (the orchestrators' question): what `matches` would answer
            found.extend(c.obj for c in pending.values() if c.op != DELETE and c.obj.service_id == service_id)  # type: ignore[attr-defined]
        else:
            found.extend(c.obj for c in pending.values()
                         if c.op != DELETE and matches(c.obj, **criteria))  # type: ignore[arg-type]
        return found

    def _check_name(self, table: str, obj: StoreObject) -> None:
        if obj.name:
            for other in self.find(table, name=obj.name):
                if other.id != obj.id:
                    raise NameConflict(KIND_WORDS[table], obj.name)

    def create(self, obj: StoreObject) -> StoreObject:
        table = obj.TABLE
        if self.get(table, obj.id) is not None:
            raise ObjectExists(f"{KIND_WORDS[table]} {obj.id} already exists")
        if table in UNIQUE_NAME_TABLES:
            self._check_name(table, obj)
        obj.created_at = obj.created_at or self.now
        obj.updated_at = self.now
        merge_change(self.changes, Change(CREATE, table, 0, obj))
        return obj

    def update(self, obj: StoreObject) -> StoreObject:
        """Write `obj` back; `obj.version` must be the version currently stored."""
        table = obj.TABLE
        stored = self.get(table, obj.id)
        if stored is None:
            raise NotFound(f"{KIND_WORDS[table]} {obj.id} not found")
        current = int(stored.version)
        if obj.version != current:
            raise StaleVersion(f"{KIND_WORDS[table]} {obj.id}: version {obj.version}, stored {current}")
        if table in UNIQUE_NAME_TABLES:
            self._check_name(table, obj)
        obj.updated_at = self.now
        key = (table, obj.id)
        if key in self.changes:
            merge_change(self.changes, Change(UPDATE, table, current, obj))
        else:
            self.changes[key] = Change(UPDATE, table, current, obj)
        return obj

    def delete(self, table: str, obj_id: str) -> None:
        current = self.get(table, obj_id)
        if current is None:
            raise NotFound(f"{KIND_WORDS[table]} {obj_id} not found")
        merge_change(self.changes, Change(DELETE, table, current.version, current))
