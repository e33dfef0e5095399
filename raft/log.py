"""The Raft log as the pure core sees it: a snapshot boundary followed by entries in memory.

Theory of operation
-------------------
The log is `[snapshot_index + 1 .. last_index]` held in `entries`, preceded by the compacted
prefix that only survives as `(snapshot_index, snapshot_term)`. Three cursors move through it:

    snapshot_index <= applied <= committed <= last_index
    snapshot_index <= stabled <= last_index

Entries with index <= `stabled` are known to be on durable storage; entries above it are
"unstable" and are handed to the driver in the next Ready. When a conflicting append truncates
the log, `stabled` moves back, so the next Ready re-sends entries that overwrite what the driver
stored at those indexes (storage must drop stored entries at and beyond `entries[0].index`).

Invariants: entries are contiguous by index, terms never decrease along the log, committed
entries are never truncated (an attempt is a protocol violation and raises), and `committed`
never moves backwards.
"""

from __future__ import annotations

from collections.abc import Sequence

from raft.types import Entry, Snapshot


class LogInvariantError(RuntimeError):
    """An operation would break a Raft log invariant (a bug or corrupt input, never a normal event)."""


def entry_size(entry: Entry) -> int:
    """Approximate wire size of an entry, used for batching limits."""
    return len(entry.data) + 24


class RaftLog:
    def __init__(self, snapshot_index: int = 0, snapshot_term: int = 0) -> None:
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self.entries: list[Entry] = []
        self.stabled = snapshot_index
        self.committed = snapshot_index
        self.applied = snapshot_index
        # A snapshot received from a leader, not yet persisted/applied by the driver.
        self.pending_snapshot: Snapshot | None = None

    # ------------------------------------------------------------------ queries
    @property
    def first_index(self) -> int:
        return self.snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    def term(self, index: int) -> int | None:
        """Term of the entry at `index`; None when compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self.entries[index - self.snapshot_index - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def entry(self, index: int) -> Entry:
        if index <= self.snapshot_index or index > self.last_index:
            raise IndexError(f"log index {index} outside [{self.first_index}, {self.last_index}]")
        return self.entries[index - self.snapshot_index - 1]

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry] | None:
        """Entries [lo, hi). None if `lo` is compacted. At least one entry is returned when the
        range is non-empty, even if it alone exceeds `max_size`."""
        if lo <= self.snapshot_index:
            return None
        hi = min(hi, self.last_index + 1)
        if lo >= hi:
            return []
        out = self.entries[lo - self.snapshot_index - 1 : hi - self.snapshot_index - 1]
        if max_size is None:
            return out
        total = 0
        for n, e in enumerate(out):
            total += entry_size(e)
            if total > max_size and n > 0:
                return out[:n]
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Is a candidate's log (last_index, last_term) at least as up-to-date as ours?"""
        return last_term > self.last_term or (last_term == self.last_term and last_index >= self.last_index)

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= `index` whose term is <= `term` (used to skip a whole term when a
        follower rejects an append). Stops at the snapshot boundary."""
        index = min(index, self.last_index)
        while index > self.snapshot_index:
            t = self.term(index)
            if t is not None and t <= term:
                break
            index -= 1
        return index

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.stabled - self.snapshot_index :]

    def has_next_committed(self) -> bool:
        return self.pending_snapshot is None and self.committed > self.applied

    def next_committed_entries(self) -> list[Entry]:
        if self.pending_snapshot is not None:
            return []
        lo = max(self.applied + 1, self.first_index)
        got = self.slice(lo, self.committed + 1)
        return got or []

    # ------------------------------------------------------------------ mutations
    def append(self, entries: Sequence[Entry]) -> int:
        """Append entries, truncating any existing suffix from the first new index. Returns the
        first index that was (re)written, or 0 for an empty batch."""
        if not entries:
            return 0
        first = entries[0].index
        if first <= self.committed:
            raise LogInvariantError(f"append at index {first} would truncate committed index {self.committed}")
        if first > self.last_index + 1:
            raise LogInvariantError(f"append at index {first} leaves a gap after {self.last_index}")
        del self.entries[first - self.snapshot_index - 1 :]
        self.stabled = min(self.stabled, first - 1)
        self.entries.extend(entries)
        return first

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or conflicts with ours (0 if all already present)."""
        for e in entries:
            t = self.term(e.index)
            if t is None and e.index <= self.snapshot_index:
                continue  # compacted, hence committed and matching
            if t != e.term:
                return e.index
        return 0

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> tuple[int, int] | None:
        """Follower-side append. Returns (last new index, first rewritten index or 0) on success,
        None when (prev_index, prev_term) does not match our log."""
        last_new = prev_index + len(entries)
        if prev_index < self.snapshot_index:
            # Everything up to our snapshot is committed, hence identical: skip what we compacted.
            entries = [e for e in entries if e.index > self.snapshot_index]
            prev_index, prev_term = self.snapshot_index, self.snapshot_term
        if not self.match_term(prev_index, prev_term):
            return None
        rewritten = 0
        conflict = self.find_conflict(entries)
        if conflict:
            rewritten = self.append(entries[conflict - prev_index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new, rewritten

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index:
                raise LogInvariantError(f"commit index {index} beyond last index {self.last_index}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader rule: advance commit to `index` only if that entry is from `term` (the current term)."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        # Only if the entry is still the one that was persisted (a conflict may have replaced it).
        if index > self.stabled and self.term(index) == term:
            self.stabled = index

    def applied_to(self, index: int) -> None:
        if index > self.committed or index < self.applied:
            raise LogInvariantError(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot received from the leader."""
        self.snapshot_index = snapshot.meta.index
        self.snapshot_term = snapshot.meta.term
        self.entries = []
        self.committed = snapshot.meta.index
        self.stabled = snapshot.meta.index
        self.pending_snapshot = snapshot

    def snapshot_applied(self, snapshot: Snapshot) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.meta == snapshot.meta:
            self.pending_snapshot = None
        self.applied = max(self.applied, snapshot.meta.index)

    def compact(self, index: int, term: int) -> None:
        """Drop entries up to `index` (which must be applied and have `term`)."""
        if index <= self.snapshot_index:
            return
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only applied up to {self.applied}")
        if self.term(index) != term:
            raise ValueError(f"cannot compact to {index}: its term is {self.term(index)}, not {term}")
        del self.entries[: index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term
        self.stabled = max(self.stabled, index)
