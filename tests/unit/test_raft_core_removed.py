"""Scripted transcripts of removed members (raft/core.py, "Removed members"): a node removed while cut
off learns that it is out from the members' REMOVED answers, steps down and stops campaigning, so the
members never see an election from it; a follower whose removal commits hears it from the leader; a
node added back under the same id is a member again; and a node that a lagging peer has simply not
heard of is never mistaken for a removed one. Nothing ticks unless the script says so.
"""

from __future__ import annotations

from raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    Message,
    MessageType,
    Role,
)
from tests.sim.memnet import MemNet

ADD_VOTER, ADD_LEARNER, REMOVE = ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE_NODE


def change(net: MemNet, leader: int, kind: ConfChangeType, node: int) -> None:
    net.nodes[leader].propose_conf_change(ConfChange(kind, node))
    net.process(leader)
    net.settle()


def terms(net: MemNet, *nids: int) -> set[int]:
    return {net.nodes[n].term for n in nids}


def test_a_removed_stale_leader_learns_it_is_out_and_steps_down() -> None:
    # The shape of simulation seeds 14798 and 16506: no pre-vote, no check-quorum. Leader 1 is cut off
    # (with follower 5); the majority elects 2, which removes 1. Nothing ever makes 1 step down by
    # itself, and 2 no longer addresses it.
    net = MemNet(5, pre_vote=False, check_quorum=False)
    net.campaign(1)
    net.partition({1, 5}, {2, 3, 4})
    net.campaign(2)
    assert net.nodes[2].role is Role.LEADER and net.nodes[2].term == 3
    change(net, 2, REMOVE, 1)
    assert net.nodes[2].conf == ConfState((2, 3, 4, 5)) and net.nodes[2].commit_index == net.nodes[2].log.last_index
    assert net.nodes[1].role is Role.LEADER and net.nodes[1].term == 2   # still leads its old term
    net.heal()
    net.tick(1)                             # its heartbeats reach the members, which answer REMOVED
    old = net.nodes[1]
    assert old.role is Role.FOLLOWER and old.removed and old.status()["removed"] is True
    assert net.soft_states[1][-1].removed   # the driver hears of it in a Ready
    assert not any(net.nodes[n].removed for n in (2, 3, 4, 5))
    net.tick(times=5 * old.cfg.election_tick)
    assert net.leaders() == [2] and terms(net, 2, 3, 4, 5) == {3}   # no member saw an election
    assert old.role is Role.FOLLOWER and old.term == 3 and old.removed
    net.propose(2, b"after")
    net.settle()
    assert all(net.applied[n][-1] == b"after" for n in (2, 3, 4, 5))


def test_a_removed_node_that_missed_its_removal_does_not_disrupt_without_pre_vote() -> None:
    net = MemNet(5, pre_vote=False, check_quorum=False)
    net.campaign(1)
    net.isolate(5)
    change(net, 1, REMOVE, 5)
    assert net.nodes[5].conf == ConfState((1, 2, 3, 4, 5))   # never heard of its removal
    net.heal()
    net.tick(5, times=3 * net.nodes[5].cfg.election_tick)    # 5 times out and asks for votes
    votes = [m for m in net.sent if m.frm == 5 and m.type is MessageType.VOTE]
    assert {m.to for m in votes} == {1, 2, 3, 4} and {m.term for m in votes} == {3}   # once, then no more
    assert net.nodes[5].removed and net.nodes[5].role is Role.FOLLOWER
    assert net.leaders() == [1] and terms(net, 1, 2, 3, 4) == {2}   # the higher term was not taken up


def test_with_pre_vote_and_check_quorum_a_removed_node_is_told_on_its_first_pre_vote() -> None:
    net = MemNet(5)                         # the swarm's settings
    net.campaign(1)
    net.isolate(5)
    change(net, 1, REMOVE, 5)
    net.heal()
    net.tick(5, times=3 * net.nodes[5].cfg.election_tick)
    asked = [m for m in net.sent if m.frm == 5 and m.type in (MessageType.PRE_VOTE, MessageType.VOTE)]
    assert {m.type for m in asked} == {MessageType.PRE_VOTE} and len(asked) == 4
    assert {m.frm for m in net.sent if m.type is MessageType.REMOVED} == {1, 2, 3, 4}
    assert net.nodes[5].removed and net.nodes[5].term == 2
    assert net.leaders() == [1] and terms(net, 1, 2, 3, 4) == {2}


def test_a_follower_whose_removal_commits_is_told_by_the_leader() -> None:
    net = MemNet(5)
    net.campaign(1)
    change(net, 1, REMOVE, 5)
    # The leader stops replicating to 5 once the removal commits, and tells it: 5 holds the
    # committed entry, so it learns the commit index and applies its own removal.
    assert {m.to for m in net.sent if m.type is MessageType.REMOVED} == {5}
    gone = net.nodes[5]
    assert gone.commit_index == net.nodes[1].commit_index and gone.applied == gone.commit_index
    assert gone.removed and net.soft_states[5][-1].removed
    assert not any(net.nodes[n].removed for n in (1, 2, 3, 4))
    net.crash(5)
    assert net.restart(5).removed           # its own log says so after a restart too


def test_a_removed_leader_knows_it_is_out_after_stepping_down() -> None:
    net = MemNet(3)
    net.campaign(1)
    change(net, 1, REMOVE, 1)
    assert net.nodes[1].role is Role.FOLLOWER and net.nodes[1].removed
    assert not net.nodes[2].removed and not net.nodes[3].removed


def test_a_node_added_back_under_the_same_id_is_a_member_again() -> None:
    net = MemNet(5, pre_vote=False, check_quorum=False)
    net.campaign(1)
    net.isolate(5)
    change(net, 1, REMOVE, 5)
    net.heal()
    net.tick(5, times=3 * net.nodes[5].cfg.election_tick)
    assert net.nodes[5].removed and net.nodes[5].term == 3   # told by REMOVED; its term went up alone
    change(net, 1, ADD_LEARNER, 5)
    # 5 answers the leader's appends of term 2 with its term 3: 1 steps down, and the next leader
    # brings the learner's log up to date.
    assert net.nodes[1].role is Role.FOLLOWER and net.nodes[1].term == 3
    net.tick(1, 2, 3, 4, times=3 * net.nodes[1].cfg.election_tick)
    [leader] = net.leaders()
    assert net.nodes[leader].conf == ConfState((1, 2, 3, 4), (5,))
    assert net.nodes[5].log.last_index == net.nodes[leader].log.last_index
    assert not net.nodes[5].removed and net.nodes[5].conf == ConfState((1, 2, 3, 4), (5,))
    change(net, leader, ADD_VOTER, 5)
    assert net.nodes[5].conf == ConfState((1, 2, 3, 4, 5)) and not net.nodes[5].removed
    net.isolate(leader)
    net.campaign(5)                         # a voter again: it may campaign, and win
    assert net.nodes[5].role is Role.LEADER


def test_a_voter_a_lagging_peer_has_not_heard_of_is_not_taken_for_removed() -> None:
    # 3 joins {1, 2} while 2 is cut off, so 2 never hears of it; then 1 dies. 3 can only be elected
    # with 2's vote, which 2 must give although 3 is in neither of its configurations.
    net = MemNet(2, check_quorum=False)
    net.campaign(1)
    net.isolate(2)
    net.add_node(3)
    change(net, 1, ADD_VOTER, 3)
    net.tick(1)                             # a heartbeat finds 3, which catches up: committed by 1 and 3
    assert net.nodes[3].commit_index == net.nodes[1].commit_index == net.nodes[1].log.last_index
    assert net.nodes[2].conf == ConfState((1, 2))
    net.crash(1)
    net.heal()
    net.campaign(3)
    assert net.nodes[3].role is Role.LEADER and not net.nodes[3].removed
    assert not any(m.type is MessageType.REMOVED for m in net.sent)
    assert net.nodes[2].conf == ConfState((1, 2, 3)) and net.nodes[2].leader == 3


def test_a_removed_notice_is_weighed_against_the_receivers_own_log() -> None:
    net = MemNet(3)
    net.campaign(1)                         # entries 1..4, all committed, term 2
    node = net.nodes[3]
    node.step(Message(MessageType.APPEND, 3, 1, 2, log_term=2, index=4, entries=(Entry(2, 5),), commit=4))
    assert node.commit_index == 4
    # A notice about a commit our log holds says nothing new about membership: our own
    # configuration decides. It does tell us that the entry is committed.
    node.step(Message(MessageType.REMOVED, 3, 2, 2, log_term=2, index=5))
    assert node.commit_index == 5 and not node.removed
    # A notice about a commit beyond our log: a committed configuration we have not seen excludes
    # us, so we stop campaigning (we could not win without that entry anyway) ...
    node.step(Message(MessageType.REMOVED, 3, 2, 2, log_term=2, index=7))
    net.process(3)
    assert node.removed
    net.isolate(3)
    net.tick(3, times=5 * node.cfg.election_tick)
    assert node.role is Role.FOLLOWER and not [m for m in net.sent if m.frm == 3 and m.type is MessageType.PRE_VOTE]
    # ... until our log reaches that commit, when our own configuration decides again.
    node.step(Message(MessageType.APPEND, 3, 1, 2, log_term=2, index=5,
                      entries=(Entry(2, 6), Entry(2, 7)), commit=7))
    net.process(3)
    assert not node.removed and node.commit_index == 7
