"""Scripted transcripts of the pure Raft core: elections, replication, the commit rule, log repair,
NotLeader, restart, and the purity of the core's imports. Nothing ticks unless the script says so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from raft.config import Config
from raft.core import RaftCore
from raft.types import ConfState, Entry, HardState, Message, MessageType, NotLeader, ProposalDropped, Role
from tests.sim.memnet import MemNet

RAFT_DIR = Path(__file__).resolve().parents[2] / "raft"
CORE_MODULES = ["core", "leader", "removal", "log", "progress", "quorum", "readonly", "confchange", "config", "types"]
FORBIDDEN = {"asyncio", "socket", "os", "time", "threading", "selectors", "io", "pathlib", "shutil",
             "subprocess", "multiprocessing", "ssl", "tempfile", "signal"}


def roles(net: MemNet) -> dict[int, str]:
    return {n: c.role.value for n, c in net.nodes.items() if n not in net.down}


def test_core_modules_import_no_io() -> None:
    for name in CORE_MODULES:
        tree = ast.parse((RAFT_DIR / f"{name}.py").read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"open", "__import__"}, f"raft/{name}.py calls {node.func.id}()"
        assert not imported & FORBIDDEN, f"raft/{name}.py imports {imported & FORBIDDEN}"
        raft_deps = {m for m in imported if m not in {"__future__", "collections", "dataclasses", "enum",
                                                      "random", "struct", "typing", "raft"}}
        assert not raft_deps, f"raft/{name}.py imports {raft_deps}"


def test_bootstrap_commits_membership_and_first_election() -> None:
    net = MemNet(3)
    # Bootstrap: the founding membership is committed as entries 1..3 at term 1 on every node.
    assert all(c.commit_index == 3 and c.conf == ConfState((1, 2, 3)) for c in net.nodes.values())
    net.campaign(1)
    assert roles(net) == {1: "leader", 2: "follower", 3: "follower"}
    assert {c.term for c in net.nodes.values()} == {2}
    # The new leader's empty entry (index 4, term 2) is committed everywhere.
    assert all(c.commit_index == 4 and c.leader == 1 for c in net.nodes.values())


def test_prevote_stops_a_partitioned_node_from_inflating_terms() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.isolate(3)
    net.tick(3, times=100)                  # node 3 times out again and again, alone
    assert net.nodes[3].term == 2           # pre-vote never won, so its term never moved
    net.heal()
    net.tick(times=2)
    assert roles(net) == {1: "leader", 2: "follower", 3: "follower"}
    assert net.nodes[1].term == 2           # the healthy leader was not disrupted


def test_without_prevote_a_partitioned_node_disrupts_on_return() -> None:
    net = MemNet(3, pre_vote=False, check_quorum=False)
    net.campaign(1)
    net.isolate(3)
    net.tick(3, times=100)
    assert net.nodes[3].term > 5            # the contrast: terms inflate without pre-vote
    inflated = net.nodes[3].term
    net.heal()
    net.tick(times=30)                      # node 3 campaigns again at an even higher term
    assert net.nodes[1].term > inflated     # ... and knocks the healthy leader out of its term


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.isolate(1)
    # Activity is checked once per election timeout; a full silent window makes it step down.
    net.tick(times=2 * net.nodes[1].cfg.election_tick)
    assert net.nodes[1].role is Role.FOLLOWER and net.nodes[1].leader == 0
    net.tick(2, 3, times=2 * net.nodes[1].cfg.election_tick)
    [new_leader] = net.leaders()             # the majority side elected a new leader
    assert new_leader in (2, 3) and net.nodes[new_leader].term >= 3


def test_follower_in_lease_ignores_a_disruptive_vote() -> None:
    net = MemNet(3)
    net.campaign(1)
    # A (pre-)vote request from node 3 at a higher term arrives while node 2 hears from leader 1.
    net.nodes[2].step(Message(MessageType.VOTE, 2, 3, term=9, index=100, log_term=9))
    assert net.nodes[2].term == 2 and net.nodes[2].vote == 1


def test_replication_commits_and_applies_in_order() -> None:
    net = MemNet(5)
    net.campaign(1)
    for word in (b"a", b"b", b"c"):
        net.propose(1, word)
    net.settle()
    assert all(net.applied[n] == [b"a", b"b", b"c"] for n in net.nodes)
    assert {c.commit_index for c in net.nodes.values()} == {9}  # 5 membership + 1 empty + 3


def test_batching_sends_one_append_per_ready_and_respects_max_size() -> None:
    net = MemNet(3, max_size_per_msg=100)
    net.campaign(1)
    net.sent.clear()
    for _ in range(10):
        net.nodes[1].propose(b"x" * 40)      # ten proposals before the next Ready
    net.process(1)
    to_2 = [m for m in net.sent if m.to == 2 and m.type is MessageType.APPEND]
    # 64 bytes per entry against a 100-byte budget: one entry per message, pipelined, all sent.
    assert [len(m.entries) for m in to_2] == [1] * 10
    net.settle()
    assert net.applied[3] == [b"x" * 40] * 10


def test_proposal_on_a_follower_fails_fast_with_leader_hint() -> None:
    net = MemNet(3)
    with pytest.raises(NotLeader) as no_leader:
        net.nodes[2].propose(b"x")
    assert no_leader.value.leader == 0
    with pytest.raises(NotLeader):
        net.nodes[2].read_index(b"r")
    net.campaign(1)
    with pytest.raises(NotLeader) as err:
        net.nodes[2].propose(b"x")
    assert err.value.leader == 1


def test_figure8_an_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    # Raft paper, Figure 8: replicas of an entry from an earlier term are not enough to commit it.
    net = MemNet(5, check_quorum=False, max_size_per_msg=1)
    net.campaign(1)                                         # term 2: leader 1, index 6 committed
    assert net.nodes[1].commit_index == 6
    net.cut = {(1, 3), (1, 4), (1, 5)}
    x_index = net.propose(1, b"x")                          # (a) index 7, term 2, reaches node 2 only
    net.settle()
    assert x_index == 7 and net.log_terms(2)[-1] == (7, 2) and net.nodes[1].commit_index == 6
    net.crash(1)
    net.heal()
    net.drop_rules.append(lambda m: m.frm == 5 and m.type is MessageType.APPEND)
    net.campaign(5)                                         # (b) term 3: 5 wins with votes of 3 and 4
    assert net.nodes[5].role is Role.LEADER and net.log_terms(5)[-1] == (7, 3)
    net.crash(5)                                            # its index-7 entry never left node 5
    net.heal()
    net.restart(1)
    # Node 1 may replicate index 7, but no entry of its own term (its empty entry at index 8) may
    # land anywhere: such appends are lost unless the receiver would reject them anyway.
    net.drop_rules.append(lambda m: m.type is MessageType.APPEND and any(e.term == 4 for e in m.entries)
                          and net.nodes[m.to].log.match_term(m.index, m.log_term))
    net.campaign(1)                                         # rejected: it learns term 3 from the replies
    net.campaign(1)                                         # (c) term 4
    assert net.nodes[1].role is Role.LEADER and net.nodes[1].term == 4
    holders = [n for n in (1, 2, 3, 4) if (7, 2) in net.log_terms(n)]
    assert len(holders) >= 3                                # a majority of 5 holds (7, term 2) ...
    assert net.nodes[1].commit_index == 6                   # ... and it is still NOT committed
    net.crash(1)
    net.heal()
    net.restart(5)
    net.campaign(5)                                         # rejected: it learns term 4 from the replies
    net.campaign(5)                                         # (d) term 5: 5 wins and overwrites index 7
    assert net.nodes[5].role is Role.LEADER
    for n in (2, 3, 4):
        assert (7, 3) in net.log_terms(n)
        assert b"x" not in net.applied[n]                  # x was never applied anywhere


def test_conflicting_uncommitted_entries_are_repaired() -> None:
    net = MemNet(5, check_quorum=False)                     # no lease: 2 can be elected at once
    net.campaign(1)
    net.propose(1, b"committed")
    net.settle()
    net.isolate(1)
    for word in (b"lost1", b"lost2", b"lost3"):
        net.propose(1, word)                                # the minority leader cannot commit these
    net.settle()
    net.campaign(2)
    assert net.nodes[2].role is Role.LEADER
    net.propose(2, b"new")
    net.settle()
    net.heal()
    net.tick(times=2)                                       # heartbeats reach the old leader
    assert net.nodes[1].role is Role.FOLLOWER
    net.settle()
    assert all(net.applied[n] == [b"committed", b"new"] for n in net.nodes)
    terms = net.log_terms(2)
    assert all(net.log_terms(n) == terms for n in net.nodes)


def test_an_entry_overwritten_in_the_same_ready_is_not_acknowledged() -> None:
    # Found by simulation seed 4543: an append from the old leader and one from a newer leader reach
    # a follower between two Readies. The second overwrites the entry the first one added, so the
    # acknowledgement already queued for the old leader must not leave: that entry is never persisted.
    net = MemNet(3, pre_vote=False, check_quorum=False)
    net.campaign(1)                                         # entries 1..4, term 2
    follower = net.nodes[3]
    follower.step(Message(MessageType.APPEND, 3, 1, 2, log_term=2, index=4, entries=(Entry(2, 5),), commit=4))
    follower.step(Message(MessageType.APPEND, 3, 2, 3, log_term=2, index=4, entries=(Entry(3, 5),), commit=4))
    rd = follower.ready()
    assert rd.entries == [Entry(3, 5)]
    acks = [(m.to, m.term, m.index) for m in rd.messages if m.type is MessageType.APPEND_RESP and not m.reject]
    assert acks == [(2, 3, 5)]


def test_restart_recovers_term_vote_log_and_conf_from_storage() -> None:
    net = MemNet(3)
    net.campaign(1)
    net.propose(1, b"a")
    net.settle()
    before = (net.nodes[2].term, net.nodes[2].vote, net.log_terms(2))
    net.crash(2)
    net.restart(2)
    core = net.nodes[2]
    assert (core.term, core.vote, net.log_terms(2)) == before
    assert core.conf == ConfState((1, 2, 3)) and core.role is Role.FOLLOWER
    assert net.applied[2] == [b"a"]                         # re-applied from the persisted log


def test_bad_restart_input_is_rejected_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not contiguous"):
        RaftCore(Config(id=1), entries=[Entry(1, 1), Entry(1, 3)])
    with pytest.raises(ValueError, match="beyond the last stored index"):
        RaftCore(Config(id=1), hard_state=HardState(1, 0, 5), entries=[Entry(1, 1)])
    with pytest.raises(ValueError, match="election_tick"):
        Config(id=1, election_tick=1, heartbeat_tick=1)


def test_single_node_cluster_commits_alone() -> None:
    net = MemNet(1)
    net.campaign(1)
    assert net.nodes[1].role is Role.LEADER
    net.propose(1, b"solo")
    assert net.applied[1] == [b"solo"]
    net.nodes[1].read_index(b"r1")
    net.process(1)
    assert [r.request_ctx for r in net.read_states[1]] == [b"r1"]


def test_the_only_voter_campaigns_on_its_first_tick_and_others_wait_for_the_timeout() -> None:
    alone = MemNet(1)
    alone.tick(1)
    assert alone.nodes[1].role is Role.LEADER and alone.nodes[1].term == 2
    restarted = RaftCore(Config(id=1, election_tick=10), hard_state=HardState(2, 1, 2),
                         entries=alone.storage[1].entries[:2])
    assert restarted.conf == ConfState((1,))
    restarted.tick()
    assert restarted.role is Role.LEADER and restarted.term == 3
    three = MemNet(3)
    three.tick(1, times=three.nodes[1].cfg.election_tick - 1)
    assert roles(three) == {1: "follower", 2: "follower", 3: "follower"}


def test_uncommitted_size_limit_drops_proposals() -> None:
    net = MemNet(3, max_uncommitted_size=100)
    net.campaign(1)
    net.isolate(1)
    net.propose(1, b"x" * 60)
    with pytest.raises(ProposalDropped):
        net.propose(1, b"y" * 60)
