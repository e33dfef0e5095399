"""The pure core told it is refused outright (raft/removal.py, "Refused members"): a REMOVED marked
`reject` comes from a cluster whose log cannot be compared with ours (one forced anew), so the node
believes it whatever its log says. It steps down, never campaigns, and grants no vote or pre-vote,
so the rest of its old configuration cannot make a quorum with it. Scripted; nothing ticks unless
the script says so.
"""

from __future__ import annotations

from raft.types import Message, MessageType, Role
from tests.sim.memnet import MemNet

FORCED = 9      # a node of the new cluster, unknown to the old configuration's logs


def refuse(net: MemNet, nid: int, *, term: int = 1, index: int = 1) -> None:
    # The (index, term) of a refusal mean nothing to the receiver: here they match its own log.
    net.nodes[nid].step(Message(MessageType.REMOVED, nid, FORCED, term, log_term=1, index=index, reject=True))
    net.process(nid)


def test_a_refused_leader_steps_down_and_never_campaigns_whatever_its_log_says() -> None:
    net = MemNet(3, pre_vote=True, check_quorum=True)
    net.campaign(1)
    old = net.nodes[1]
    assert old.role is Role.LEADER
    term = old.term
    refuse(net, 1)
    assert old.role is Role.FOLLOWER and old.removed and old.status()["removed"] is True
    assert old.term == term, "the refusal's term belongs to another log"
    assert net.soft_states[1][-1].removed
    net.isolate(1)
    net.tick(1, times=5 * old.cfg.election_tick)
    assert old.role is Role.FOLLOWER and old.term == term, "it never campaigned"


def test_a_refused_node_grants_no_vote_so_its_old_configuration_cannot_make_a_quorum() -> None:
    for pre_vote in (True, False):
        net = MemNet(3, pre_vote=pre_vote, check_quorum=pre_vote)
        net.campaign(1)
        refuse(net, 1)
        refuse(net, 3)
        net.campaign(2)     # needs 1 or 3: both refused
        assert net.nodes[2].role is not Role.LEADER, f"pre_vote={pre_vote}"
        net.tick(times=5 * net.nodes[2].cfg.election_tick)
        assert net.leaders() == [], f"pre_vote={pre_vote}: {net.leaders()}"
        assert net.nodes[1].removed and net.nodes[3].removed and not net.nodes[2].removed


def test_an_ordinary_notice_covered_by_the_log_is_still_ignored() -> None:
    # Without `reject`, a REMOVED about an entry the receiver holds changes nothing: its own log decides.
    net = MemNet(3, pre_vote=True, check_quorum=True)
    net.campaign(1)
    net.nodes[2].step(Message(MessageType.REMOVED, 2, FORCED, 1, log_term=1, index=1))
    net.process(2)
    assert not net.nodes[2].removed
    assert net.leaders() == [1]
