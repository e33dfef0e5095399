"""Membership changes: their encoding in log entries and the configuration they produce.

Theory of operation
-------------------
shoal changes membership one server at a time (add/remove one voter, add a learner, promote a
learner). A configuration takes effect on a node as soon as its entry is in the node's log,
committed or not (the rule of the Raft dissertation, §4.1), so `ConfHistory` tracks the
configuration as of every conf-change entry still in the log: truncating the log rolls the
configuration back, compacting it folds the history into the snapshot's base.

Safety rests on two rules enforced by the leader: at most one conf change is uncommitted at a
time, and a new leader proposes none until it has committed an entry of its own term.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from raft.types import ConfChange, ConfChangeType, ConfState, Entry, EntryType

_HEADER = struct.Struct(">BQ")


class ConfChangeError(ValueError):
    """A membership change that is not valid against the current configuration."""


def encode_conf_change(cc: ConfChange) -> bytes:
    return _HEADER.pack(int(cc.type), cc.node_id) + cc.context


def decode_conf_change(data: bytes) -> ConfChange:
    if len(data) < _HEADER.size:
        raise ConfChangeError(f"conf change entry too short ({len(data)} bytes)")
    kind, node_id = _HEADER.unpack_from(data)
    try:
        cc_type = ConfChangeType(kind)
    except ValueError:
        raise ConfChangeError(f"unknown conf change type {kind}") from None
    return ConfChange(cc_type, node_id, data[_HEADER.size :])


def apply_conf_change(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after `cc`; raises ConfChangeError if `cc` is not valid for `conf`."""
    if cc.node_id <= 0:
        raise ConfChangeError(f"node id must be positive, got {cc.node_id}")
    voters, learners = set(conf.voters), set(conf.learners)
    n = cc.node_id
    if cc.type is ConfChangeType.ADD_VOTER:
        if n in voters:
            raise ConfChangeError(f"node {n} is already a voter")
        learners.discard(n)  # promotion of a learner, or a brand new voter
        voters.add(n)
    elif cc.type is ConfChangeType.ADD_LEARNER:
        if n in voters:
            raise ConfChangeError(f"node {n} is a voter; demoting a voter to learner is not supported")
        if n in learners:
            raise ConfChangeError(f"node {n} is already a learner")
        learners.add(n)
    elif cc.type is ConfChangeType.REMOVE_NODE:
        if n not in voters and n not in learners:
            raise ConfChangeError(f"node {n} is not a member")
        if voters == {n}:
            raise ConfChangeError(f"cannot remove node {n}: it is the last voter")
        voters.discard(n)
        learners.discard(n)
    return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))


def is_member(conf: ConfState, node_id: int) -> bool:
    """Is `node_id` a voter or a learner of `conf`?"""
    return node_id in conf.voters or node_id in conf.learners


def conf_after_entry(conf: ConfState, entry: Entry) -> ConfState:
    """Apply a CONF_CHANGE entry; an invalid one (never proposed by a correct leader) is a no-op."""
    try:
        return apply_conf_change(conf, decode_conf_change(entry.data))
    except ConfChangeError:
        return conf


class ConfHistory:
    """The configuration as of each conf-change entry in the log, over a base at the snapshot."""

    def __init__(self, base_index: int, base: ConfState) -> None:
        self.base_index = base_index
        self.base = base
        self._changes: list[tuple[int, ConfState]] = []

    @property
    def current(self) -> ConfState:
        return self._changes[-1][1] if self._changes else self.base

    @property
    def last_change_index(self) -> int:
        """Index of the newest conf-change entry in the log (the base index if none)."""
        return self._changes[-1][0] if self._changes else self.base_index

    def at(self, index: int) -> ConfState:
        if index < self.base_index:
            raise ValueError(f"configuration at {index} is compacted (base {self.base_index})")
        conf = self.base
        for idx, c in self._changes:
            if idx > index:
                break
            conf = c
        return conf

    def on_append(self, entries: Iterable[Entry]) -> bool:
        """Record the conf changes in newly appended entries (after `truncate_from`). True if any."""
        changed = False
        for e in entries:
            if e.type is EntryType.CONF_CHANGE:
                self._changes.append((e.index, conf_after_entry(self.current, e)))
                changed = True
        return changed

    def truncate_from(self, index: int) -> bool:
        """Forget conf changes at or after `index` (the log was truncated). True if any."""
        before = len(self._changes)
        self._changes = [(i, c) for i, c in self._changes if i < index]
        return len(self._changes) != before

    def compact(self, index: int) -> None:
        self.base = self.at(index)
        self.base_index = index
        self._changes = [(i, c) for i, c in self._changes if i > index]

    def reset(self, index: int, conf: ConfState) -> None:
        self.base_index, self.base, self._changes = index, conf, []
