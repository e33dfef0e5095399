"""WAL and disk storage: replay, torn tails, mid-log corruption, atomic files, group commit, segments."""

from __future__ import annotations

import asyncio
import os

import pytest

from raft.codec import decode_message, encode_message, from_wire, to_wire
from raft.storage import DiskStorage, atomic_write
from raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from raft.wal import WAL, WALCorruptError


def entries(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term=term, index=i, data=bytes([i % 256]) * size) for i in range(lo, hi + 1)]


def open_wal(path: str, **kw) -> tuple[WAL, list[Entry], HardState | None]:
    w = WAL(path, **kw)
    r = w.open()
    return w, r.entries, r.hard_state


def test_codec_round_trips_every_contract_type() -> None:
    meta = SnapshotMeta(index=7, term=2, conf=ConfState(voters=(1, 2), learners=(3,)))
    msg = Message(type=MessageType.SNAPSHOT, to=2, frm=1, term=3, log_term=2, index=9,
                  entries=(Entry(1, 1, EntryType.CONF_CHANGE, b"x"),), commit=4, reject=True,
                  reject_hint=3, context=b"ctx", snapshot_meta=meta, offset=10, chunk=b"abc", done=True)
    assert decode_message(encode_message(msg)) == msg
    for value in (Entry(2, 3, EntryType.NORMAL, b"d"), HardState(3, 1, 2), Snapshot(meta, b"state")):
        assert from_wire(type(value), to_wire(value)) == value


def test_replay_returns_entries_and_latest_hard_state(tmp_path) -> None:
    w, got, hs = open_wal(str(tmp_path))
    assert got == [] and hs is None
    w.save(HardState(1, 1, 0), entries(1, 5))
    w.save(HardState(1, 1, 5), [])
    w.close()
    _, got, hs = open_wal(str(tmp_path))
    assert got == entries(1, 5) and hs == HardState(1, 1, 5)


def test_conflicting_suffix_overwrite_is_durable(tmp_path) -> None:
    w, _, _ = open_wal(str(tmp_path))
    w.save(HardState(1, 1, 2), entries(1, 6, term=1))
    w.save(HardState(2, 0, 3), entries(4, 5, term=2))     # a new leader overwrote 4..6
    w.save(None, entries(6, 7, term=2))
    w.close()
    _, got, hs = open_wal(str(tmp_path))
    assert [(e.index, e.term) for e in got] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2), (7, 2)]
    assert hs == HardState(2, 0, 3)


def test_torn_tail_is_truncated_on_restart(tmp_path) -> None:
    w, _, _ = open_wal(str(tmp_path))
    w.save(HardState(1, 1, 3), entries(1, 3))
    w.save(None, entries(4, 4))
    w.close()
    [seg] = w.segment_paths()
    good_size = os.path.getsize(seg)
    with open(seg, "r+b") as f:             # a half-written last record
        f.truncate(good_size - 5)
    w2 = WAL(str(tmp_path))
    r = w2.open()
    assert r.entries == entries(1, 3) and r.truncated_bytes > 0
    w2.save(None, entries(4, 5))            # appends continue cleanly after the cut
    w2.close()
    _, got, _ = open_wal(str(tmp_path))
    assert got == entries(1, 5)


def test_bad_checksum_of_last_record_and_zero_tail_are_torn_tails(tmp_path) -> None:
    w, _, _ = open_wal(str(tmp_path))
    w.save(None, entries(1, 3))
    w.close()
    [seg] = w.segment_paths()
    with open(seg, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
        f.seek(0, os.SEEK_END)
        f.write(b"\0" * 64)                  # a filesystem may extend the size before the data lands
    _, got, _ = open_wal(str(tmp_path))
    assert got == entries(1, 2)


def test_mid_log_corruption_names_file_and_offset(tmp_path) -> None:
    w, _, _ = open_wal(str(tmp_path))
    w.save(None, entries(1, 1))
    [seg] = w.segment_paths()
    second_record_at = os.path.getsize(seg)
    w.save(None, entries(2, 4))
    w.close()
    with open(seg, "r+b") as f:              # flip a payload byte of record 2; records 3, 4 stay valid
        f.seek(second_record_at + 12)
        b = f.read(1)
        f.seek(second_record_at + 12)
        f.write(bytes([b[0] ^ 0x55]))
    with pytest.raises(WALCorruptError) as err:
        WAL(str(tmp_path)).open()
    assert err.value.path == seg and err.value.offset == second_record_at
    assert seg in str(err.value) and f"offset {second_record_at}" in str(err.value)
    assert os.path.getsize(seg) > second_record_at     # nothing was dropped


def test_corruption_in_a_non_last_segment_is_an_error(tmp_path) -> None:
    w, _, _ = open_wal(str(tmp_path), segment_size=4096)
    for i in range(1, 40):
        w.save(None, entries(i, i, size=300))
    w.close()
    first = w.segment_paths()[0]
    with open(first, "r+b") as f:
        f.truncate(os.path.getsize(first) - 3)
    with pytest.raises(WALCorruptError, match=r"not the last segment"):
        WAL(str(tmp_path), segment_size=4096).open()


def test_segment_rollover_and_compaction(tmp_path) -> None:
    w, _, _ = open_wal(str(tmp_path), segment_size=4096)
    for i in range(1, 101):
        w.save(HardState(1, 1, i - 1), entries(i, i, size=200))
    segs = w.segment_paths()
    assert len(segs) >= 4
    removed = w.compact(60)
    assert removed and all(p not in w.segment_paths() for p in removed)
    assert w.segment_paths()[-1] == segs[-1]            # the active segment is never removed
    w.close()
    _, got, hs = open_wal(str(tmp_path), segment_size=4096)
    assert got[0].index <= 61 and got[-1].index == 100
    assert [e.index for e in got] == list(range(got[0].index, 101))
    assert hs == HardState(1, 1, 99)


def test_atomic_write_replaces_whole_file(tmp_path) -> None:
    path = str(tmp_path / "f")
    atomic_write(path, b"old" * 1000)
    atomic_write(path, b"new")
    assert open(path, "rb").read() == b"new"
    assert not os.path.exists(path + ".tmp")


def test_storage_snapshot_hardstate_checkpoint_and_leftover_tmp(tmp_path) -> None:
    fsyncs: list[int] = []

    def recording_fsync(fd: int) -> None:
        fsyncs.append(fd)
        os.fsync(fd)

    s = DiskStorage(str(tmp_path), segment_size=4096, fsync=recording_fsync)
    s.load()
    for i in range(1, 61):
        s.save(HardState(2, 1, i), entries(i, i, term=2, size=200))
    snap = Snapshot(SnapshotMeta(index=50, term=2, conf=ConfState(voters=(1, 2, 3))), b"state@50")
    removed = s.save_snapshot(snap)
    assert removed and fsyncs
    s.close()
    # An interrupted later snapshot write leaves only a .tmp file: it must be ignored.
    with open(tmp_path / "snapshot.tmp", "wb") as f:
        f.write(b"partial garbage")
    s2 = DiskStorage(str(tmp_path), segment_size=4096)
    loaded = s2.load()
    assert loaded.snapshot == snap
    assert loaded.hard_state == HardState(2, 1, 60)
    assert [e.index for e in loaded.entries] == list(range(51, 61))
    assert not os.path.exists(tmp_path / "snapshot.tmp")
    s2.close()


def test_installed_snapshot_resets_a_mismatching_log(tmp_path) -> None:
    s = DiskStorage(str(tmp_path))
    s.load()
    s.save(HardState(1, 1, 2), entries(1, 8, term=1))
    snap = Snapshot(SnapshotMeta(index=20, term=3, conf=ConfState(voters=(1, 2, 3))), b"s")
    s.save(HardState(3, 0, 20), [], snapshot=snap)
    s.save(None, entries(21, 22, term=3))
    s.close()
    s2 = DiskStorage(str(tmp_path))
    loaded = s2.load()
    assert loaded.snapshot == snap
    assert [(e.index, e.term) for e in loaded.entries] == [(21, 3), (22, 3)]
    s2.close()


async def test_group_commit_shares_fsyncs(tmp_path) -> None:
    fsyncs = 0

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        os.fdatasync(fd)

    s = DiskStorage(str(tmp_path), fsync=counting_fsync)
    s.load()
    fsyncs = 0
    n = 64
    await asyncio.gather(*(s.persist(None, [Entry(1, i, data=b"v")]) for i in range(1, n + 1)))
    assert 1 <= fsyncs < n / 4, fsyncs
    s.close()
    s2 = DiskStorage(str(tmp_path))
    assert [e.index for e in s2.load().entries] == list(range(1, n + 1))
    s2.close()
