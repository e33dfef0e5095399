"""The Raft data a --force-new-cluster keeps aside gets a name of its own every time."""

from __future__ import annotations

from pathlib import Path

from node.bootstrap import _aside_name


def test_two_forced_clusters_in_one_second_keep_both_old_logs_apart(tmp_path: Path) -> None:
    raft_dir = tmp_path / "raft"
    raft_dir.mkdir()
    first = _aside_name(raft_dir)
    first.mkdir()
    (first / "wal").write_text("the first old log")
    second = _aside_name(raft_dir)
    assert second != first and not second.exists()
    assert second.parent == raft_dir.parent and second.name.startswith("raft.before-force-new-cluster.")
    raft_dir.rename(second)                      # what force_new_cluster does: no "Directory not empty"
    assert (first / "wal").read_text() == "the first old log"
