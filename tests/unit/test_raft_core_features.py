"""Scripted transcripts of the core's features: membership changes, snapshots and chunked install,
leadership transfer, and ReadIndex.
"""

from __future__ import annotations

import pytest

from raft.confchange import ConfChangeError
from raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Message,
    MessageType,
    ProposalDropped,
    Role,
    Snapshot,
    SnapshotMeta,
)
from tests.sim.memnet import MemNet

ADD_VOTER, ADD_LEARNER, REMOVE = ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE_NODE


def change(net: MemNet, leader: int, kind: ConfChangeType, node: int) -> None:
    net.nodes[leader].propose_conf_change(ConfChange(kind, node))
    net.process(leader)
    net.settle()


# ---------------------------------------------------------------------------- membership
def test_add_learner_catch_up_then_promote() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.propose(1, b"before")
    net.settle()
    net.add_node(4)                                    # empty, not in any configuration yet
    assert net.nodes[4].conf == ConfState()
    change(net, 1, ADD_LEARNER, 4)
    assert net.nodes[1].conf == ConfState((1, 2, 3), (4,))
    assert net.applied[4] == [b"before"]               # the learner caught up on the whole log
    assert net.nodes[4].conf == ConfState((1, 2, 3), (4,))
    net.tick(4, times=50)                              # a learner never campaigns
    assert net.nodes[4].role is Role.FOLLOWER and net.nodes[4].term == 2
    change(net, 1, ADD_VOTER, 4)                       # promotion
    assert all(c.conf == ConfState((1, 2, 3, 4)) for c in net.nodes.values())
    # With four voters a commit needs three: with 3 and 4 cut off, nothing commits.
    net.isolate(3)
    net.isolate(4)
    net.propose(1, b"needs-three")
    net.settle()
    assert b"needs-three" not in net.applied[1]
    net.heal()
    net.tick(1)
    assert all(net.applied[n][-1] == b"needs-three" for n in net.nodes)


def test_learner_does_not_count_towards_commit() -> None:
    net = MemNet(3, learners=(4,))
    net.campaign(1)
    net.isolate(2)
    net.isolate(3)
    net.propose(1, b"x")
    net.settle()
    assert b"x" not in net.applied[1] and net.nodes[4].log.last_index == net.nodes[1].log.last_index


def test_one_membership_change_at_a_time_and_invalid_changes_are_refused() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.add_node(4)
    net.isolate(2)
    net.isolate(3)                                     # nothing can commit now
    net.nodes[1].propose_conf_change(ConfChange(ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped, match="not yet committed"):
        net.nodes[1].propose_conf_change(ConfChange(ADD_LEARNER, 5))
    net.heal()
    net.tick(1)
    with pytest.raises(ConfChangeError, match="already a learner"):
        net.nodes[1].propose_conf_change(ConfChange(ADD_LEARNER, 4))
    with pytest.raises(ConfChangeError, match="not a member"):
        net.nodes[1].propose_conf_change(ConfChange(REMOVE, 9))
    with pytest.raises(ConfChangeError, match="already a voter"):
        net.nodes[1].propose_conf_change(ConfChange(ADD_VOTER, 2))


def test_new_leader_waits_for_a_commit_in_its_term_before_changing_membership() -> None:
    net = MemNet(3, check_quorum=False)               # no leader lease: 2 can be elected at once
    net.campaign(1)
    net.isolate(1)
    net.drop_rules.append(lambda m: m.type is MessageType.APPEND)  # 2's empty entry will not land
    net.campaign(2)
    assert net.nodes[2].role is Role.LEADER
    with pytest.raises(ProposalDropped, match="committed an entry of its term"):
        net.nodes[2].propose_conf_change(ConfChange(ADD_LEARNER, 4))
    net.drop_rules.clear()
    net.tick(2)                                        # heartbeat -> append -> commit
    net.nodes[2].propose_conf_change(ConfChange(ADD_LEARNER, 4))


def test_remove_a_follower() -> None:
    net = MemNet(5)
    net.campaign(1)
    change(net, 1, REMOVE, 5)
    assert net.nodes[1].conf == ConfState((1, 2, 3, 4))
    assert 5 not in net.nodes[1].prs
    net.propose(1, b"after")
    net.settle()
    assert b"after" not in net.applied[5]              # the removed node hears nothing more
    net.tick(5, times=50)
    assert net.nodes[5].role is Role.FOLLOWER          # and, not being a voter, does not campaign


def test_removing_the_leader_hands_over_and_steps_down() -> None:
    net = MemNet(3)
    net.campaign(1)
    change(net, 1, REMOVE, 1)
    assert net.nodes[1].role is Role.FOLLOWER          # stepped down once its removal committed
    assert set(net.leaders()) <= {2, 3}
    net.tick(2, 3, times=30)
    [leader] = net.leaders()
    assert leader in (2, 3) and net.nodes[leader].conf == ConfState((2, 3))
    net.propose(leader, b"without-1")
    net.settle()
    assert net.applied[2][-1] == net.applied[3][-1] == b"without-1"
    assert b"without-1" not in net.applied[1]


def test_uncommitted_conf_change_is_rolled_back_with_the_log() -> None:
    net = MemNet(5, check_quorum=False)
    net.campaign(1)
    net.isolate(1)
    net.add_node(6)
    net.nodes[1].propose_conf_change(ConfChange(ADD_LEARNER, 6))
    net.cut -= {(1, 2), (2, 1)}                        # only node 2 receives the change
    net.process(1)
    net.settle()
    assert net.nodes[2].conf == ConfState((1, 2, 3, 4, 5), (6,))  # in effect on append
    net.isolate(1)
    net.campaign(3)                                    # 3 (without the change) wins with 4 and 5
    assert net.nodes[3].role is Role.LEADER
    net.heal()
    net.propose(3, b"overwrite")
    net.settle()
    assert net.nodes[2].conf == ConfState((1, 2, 3, 4, 5))  # truncated away, so rolled back


# ---------------------------------------------------------------------------- snapshots
def test_compaction_and_chunked_snapshot_to_a_lagging_follower() -> None:
    net = MemNet(3, snapshot_chunk_size=16)
    net.campaign(1)
    net.isolate(3)
    for n in range(20):
        net.propose(1, b"value-%02d" % n)
    net.settle()
    snap = net.compact(1)                              # 1 drops its log up to the applied index
    assert net.nodes[1].log.snapshot_index == snap.meta.index == net.nodes[1].applied
    assert len(snap.data) > 100                        # several chunks of 16 bytes
    net.propose(1, b"after-snapshot")
    net.settle()
    net.sent.clear()
    net.heal()
    net.tick(1)
    chunks = [m for m in net.sent if m.type is MessageType.SNAPSHOT and m.to == 3]
    assert len(chunks) == -(-len(snap.data) // 16) and chunks[-1].done
    assert [m.offset for m in chunks] == list(range(0, len(snap.data), 16))
    assert net.installed[3] == [snap]                  # assembled and handed over in a Ready
    assert net.applied[3] == net.applied[1]            # then caught up with later entries
    assert net.nodes[3].log.snapshot_index == snap.meta.index


def test_lost_chunk_is_retransmitted_and_restarted_stream_is_clean() -> None:
    net = MemNet(3, snapshot_chunk_size=8)
    net.campaign(1)
    net.isolate(3)
    for n in range(10):
        net.propose(1, b"v%d" % n)
    net.settle()
    snap = net.compact(1)
    net.heal()
    lost: list[Message] = []

    def lose_third_chunk_once(m: Message) -> bool:
        if m.type is MessageType.SNAPSHOT and m.offset == 16 and not lost:
            lost.append(m)
            return True
        return False

    net.drop_rules.append(lose_third_chunk_once)
    net.tick(1)
    assert lost and not net.installed[3]               # stalled on the lost chunk
    net.tick(1, times=5)                               # the leader re-sends it after a few ticks
    assert net.installed[3] == [snap]
    # A stray old chunk (offset 0) arriving later must not confuse the installed follower.
    net.nodes[3].step(lost[0])
    net.nodes[3].step(Message(MessageType.SNAPSHOT, 3, 1, net.nodes[1].term, snapshot_meta=snap.meta,
                              offset=0, chunk=snap.data[:8]))
    net.settle()
    assert net.applied[3] == net.applied[1]


def test_out_of_order_chunks_ask_to_resume_from_what_is_held() -> None:
    net = MemNet(3, snapshot_chunk_size=8)
    net.campaign(1)
    net.isolate(3)
    for n in range(10):
        net.propose(1, b"v%d" % n)
    net.settle()
    snap = net.compact(1)
    follower, term = net.nodes[3], net.nodes[1].term
    follower.step(Message(MessageType.SNAPSHOT, 3, 1, term, snapshot_meta=snap.meta, offset=0, chunk=snap.data[:8]))
    follower.step(Message(MessageType.SNAPSHOT, 3, 1, term, snapshot_meta=snap.meta, offset=16,
                          chunk=snap.data[16:24]))
    replies = [m for m in follower.msgs if m.type is MessageType.SNAPSHOT_RESP]
    assert [(m.reject, m.index) for m in replies] == [(False, 8), (True, 8)]


# ---------------------------------------------------------------------------- transfer
def test_leadership_transfer_to_an_up_to_date_follower() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.nodes[1].transfer_leadership(2)
    net.process(1)
    net.settle()
    assert net.nodes[2].role is Role.LEADER and net.nodes[1].role is Role.FOLLOWER
    assert net.nodes[2].term == 3


def test_transfer_to_a_lagging_follower_first_catches_it_up() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.isolate(3)
    net.propose(1, b"x")
    net.settle()
    net.heal()
    net.nodes[1].transfer_leadership(3)
    with pytest.raises(ProposalDropped, match="transferred"):
        net.nodes[1].propose(b"during-transfer")
    net.process(1)
    net.settle()
    assert net.nodes[3].role is Role.LEADER and net.applied[3] == [b"x"]


def test_transfer_to_an_unreachable_node_aborts_after_an_election_timeout() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.isolate(3)
    net.nodes[1].transfer_leadership(3)
    with pytest.raises(ProposalDropped):
        net.nodes[1].propose(b"x")
    net.tick(1, 2, times=net.nodes[1].cfg.election_tick)
    assert net.nodes[1].role is Role.LEADER
    net.propose(1, b"accepted-again")
    net.settle()
    assert net.applied[2] == [b"accepted-again"]


# ---------------------------------------------------------------------------- ReadIndex
def test_read_index_on_leader_needs_a_heartbeat_quorum() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.propose(1, b"a")
    net.settle()
    net.isolate(1)
    net.nodes[1].read_index(b"read-1")
    net.process(1)
    net.settle()
    assert net.read_states[1] == []                    # cannot confirm leadership alone
    net.heal()
    net.nodes[1].read_index(b"read-2")
    net.process(1)
    net.settle()
    # Confirming read-2 also confirms the earlier read-1; both read at the commit index.
    assert [(r.request_ctx, r.index) for r in net.read_states[1]] == [(b"read-1", 5), (b"read-2", 5)]


def test_read_index_from_a_follower_is_forwarded() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.propose(1, b"a")
    net.settle()
    net.nodes[2].read_index(b"f-read")
    net.process(2)
    net.settle()
    assert [(r.request_ctx, r.index) for r in net.read_states[2]] == [(b"f-read", 5)]


def test_new_leader_answers_reads_only_after_committing_in_its_term() -> None:
    net = MemNet(3, check_quorum=False)
    net.campaign(1)
    net.isolate(1)
    net.drop_rules.append(lambda m: m.type is MessageType.APPEND)
    net.campaign(2)
    assert net.nodes[2].role is Role.LEADER
    net.nodes[2].read_index(b"early")
    net.process(2)
    net.settle()
    assert net.read_states[2] == []                    # its empty entry is not committed yet
    net.drop_rules.clear()
    net.tick(2)                                        # heartbeat -> append -> commit -> read
    assert [r.request_ctx for r in net.read_states[2]] == [b"early"]
    assert net.read_states[2][0].index == net.nodes[2].commit_index


# ---------------------------------------------------------------------------- driver reports, restart
def test_unreachable_and_failed_snapshot_reports_fall_back_to_probing() -> None:
    net = MemNet(3, snapshot_chunk_size=8)
    net.campaign(1)
    net.propose(1, b"a")
    net.settle()
    leader = net.nodes[1]
    assert leader.status()["progress"][2]["state"] == "replicate"  # type: ignore[index]
    leader.report_unreachable(2)
    assert leader.prs[2].state.value == "probe"
    net.isolate(3)
    for n in range(5):
        net.propose(1, b"v%d" % n)
    net.settle()
    net.compact(1)
    net.heal()
    net.drop_rules.append(lambda m: m.type is MessageType.SNAPSHOT)   # the stream never arrives
    net.tick(1)
    assert leader.prs[3].state.value == "snapshot"
    leader.report_snapshot_failed(3)
    assert leader.prs[3].state.value == "probe"
    net.drop_rules.clear()
    net.tick(1, times=2)                                # probing finds the gap and starts a fresh stream
    assert net.applied[3] == net.applied[1]


def test_restart_from_a_snapshot_and_the_entries_after_it() -> None:
    net = MemNet(3)
    net.campaign(1)
    for n in range(4):
        net.propose(1, b"v%d" % n)
    net.settle()
    snap = net.compact(2)
    net.propose(1, b"after")
    net.settle()
    net.crash(2)
    core = net.restart(2)
    assert core.log.snapshot_index == snap.meta.index and core.conf == ConfState((1, 2, 3))
    assert net.applied[2] == [b"v0", b"v1", b"v2", b"v3", b"after"]
    status = core.status()
    assert status["snapshot_index"] == snap.meta.index and status["role"] == "follower"


def test_compact_refuses_a_snapshot_beyond_applied_or_with_a_wrong_conf() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.propose(1, b"a")
    net.settle()
    core = net.nodes[1]
    meta = core.snapshot_meta(core.applied)
    with pytest.raises(ValueError, match="outside"):
        core.snapshot_meta(core.applied + 1)
    with pytest.raises(ValueError, match="conf"):
        core.compact(Snapshot(SnapshotMeta(meta.index, meta.term, ConfState((1, 2))), b""))
    with pytest.raises(ValueError, match="term"):
        core.compact(Snapshot(SnapshotMeta(meta.index, meta.term + 1, meta.conf), b""))
