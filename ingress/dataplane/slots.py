"""The backend map of one service as the kernel holds it, and the smallest change between two.

A service's backends live in one nftables map whose keys are numgen slots: the rule
`dnat to numgen inc mod N map @m` picks slot 0..N-1, so slots 0..N-1 must be exactly the
backends in rotation. The same map also records the backends that are draining, at keys from
DRAIN_BASE up: numgen never reaches them (N < DRAIN_BASE), so they cost nothing per packet,
but the map read back after a restart says everything the previous life knew.

`reslot` keeps every backend that stays at the slot it had, fills the holes left by leavers
with newcomers, and closes the remaining holes by moving the last slots down: a change of k
backends rewrites O(k) elements, never the whole map.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

B = TypeVar("B", bound=Hashable)

DRAIN_BASE = 1 << 31


@dataclass(frozen=True)
class Slots(Generic[B]):
    """key → backend, sorted by key, and the modulus of the rule that reads the map (0: no rule,
    None: unknown, i.e. read back in a shape this code did not write; the rule is rewritten)."""

    elements: tuple[tuple[int, B], ...] = ()
    modulus: int | None = 0

    @classmethod
    def of(cls, elements: Mapping[int, B], modulus: int | None) -> Slots[B]:
        return cls(tuple(sorted(elements.items(), key=lambda kv: kv[0])), modulus)

    def as_dict(self) -> dict[int, B]:
        return dict(self.elements)

    @property
    def active(self) -> tuple[B, ...]:
        """The backends in rotation, by slot (only meaningful for a dense map)."""
        return tuple(b for k, b in self.elements if k < DRAIN_BASE)

    @property
    def draining(self) -> tuple[B, ...]:
        return tuple(b for k, b in self.elements if k >= DRAIN_BASE)

    @property
    def members(self) -> frozenset[B]:
        return frozenset(b for _, b in self.elements)

    @property
    def dense(self) -> bool:
        keys = [k for k, _ in self.elements if k < DRAIN_BASE]
        return keys == list(range(len(keys)))


def reslot(old: Slots[B] | None, backends: Sequence[B], draining: Iterable[B]) -> Slots[B]:
    """The layout for (backends, draining) that differs least from `old`; its modulus is the
    number of backends in rotation."""
    old_map = old.as_dict() if old is not None else {}
    want = set(backends)
    # Rotation: old slots, with a hole wherever the backend left (or the kernel had a gap).
    top = max((k for k in old_map if k < DRAIN_BASE), default=-1)
    row: list[B | None] = [old_map.get(k) for k in range(top + 1)]
    row = [b if b is not None and b in want else None for b in row]
    seen: set[B] = set()
    for i, b in enumerate(row):                 # a backend twice in a corrupt map: keep one slot
        if b is not None:
            if b in seen:
                row[i] = None
            seen.add(b)
    newcomers = [b for b in backends if b not in seen]
    for i, b in enumerate(row):
        if b is None and newcomers:
            row[i] = newcomers.pop(0)
    row.extend(newcomers)
    while row and row[-1] is None:
        row.pop()
    i = 0
    while i < len(row):                         # close holes with the last slots (never None)
        if row[i] is None:
            row[i] = row.pop()
            while row and row[-1] is None:
                row.pop()
        i += 1
    elements: dict[int, B] = {i: b for i, b in enumerate(row) if b is not None}
    # Drain records: a backend still draining keeps its key; newcomers take the lowest free.
    leaving = list(dict.fromkeys(draining))
    kept = {k: b for k, b in old_map.items() if k >= DRAIN_BASE and b in leaving}
    kept_backends: set[B] = set()
    for k in sorted(kept):
        if kept[k] in kept_backends:
            del kept[k]
        else:
            kept_backends.add(kept[k])
    free = (DRAIN_BASE + i for i in range(1 << 31) if DRAIN_BASE + i not in kept)
    for b in leaving:
        if b not in kept_backends:
            kept[next(free)] = b
    elements.update(kept)
    return Slots.of(elements, len(row))


def element_diff(old: Slots[B] | None, new: Slots[B]) -> tuple[list[int], list[tuple[int, B]]]:
    """(keys to delete, elements to add) taking `old`'s map to `new`'s; a changed key is both."""
    before = old.as_dict() if old is not None else {}
    after = new.as_dict()
    deletes = [k for k, b in before.items() if after.get(k) != b]
    adds = [(k, b) for k, b in after.items() if before.get(k) != b]
    return sorted(deletes), sorted(adds, key=lambda kv: kv[0])
