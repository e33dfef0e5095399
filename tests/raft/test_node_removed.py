"""RaftNode and removed members (issue 17): real WAL, real TCP on loopback, several nodes in one loop.

A member removed while it is down never receives the entry that removes it. When it comes back it
talks to the members (pre-votes); they answer REMOVED, and the driver must deliver that answer even
though the member's removal took it out of the address book. The removed node then says so
(`removed`, `status()`, one WARNING) and stays quiet: the members see no election from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from raft.members import Member, _unwrap_snapshot, _wrap_snapshot, read_refused_members, write_refused_members
from raft.node import NodeOptions, RaftNode
from raft.types import Entry, Role

ELECTION_TICK = 10
TIMEOUT = 10.0
REMOVED_TEXT = "this node was removed from the raft cluster"


class Register:
    """A one-key state machine: the last value written."""

    def __init__(self) -> None:
        self.value = b""

    def apply(self, entry: Entry) -> None:
        self.value = entry.data

    def snapshot(self) -> bytes:
        return self.value

    def restore(self, data: bytes) -> None:
        self.value = data


class Nodes:
    """Three founding members on loopback ports; a node restarts on the port it had."""

    def __init__(self, root: Path, **opts: float) -> None:
        self.root = root
        self.opts = {"tick_interval": 0.01, "election_tick": ELECTION_TICK, **opts}
        self.addrs: dict[int, tuple[str, int]] = {}
        self.nodes: dict[int, RaftNode] = {}

    async def start(self, i: int) -> RaftNode:
        members = {j: Member(self.addrs.get(j, ("127.0.0.1", 0))) for j in (1, 2, 3)}
        node = RaftNode(i, str(self.root / f"n{i}"), Register(), members=members,
                        options=NodeOptions(**self.opts))  # type: ignore[arg-type]
        self.nodes[i] = node
        self.addrs[i] = await node.start()
        return node

    async def start_all(self) -> None:
        for i in (1, 2, 3):
            await self.start(i)
        # Founding members learn the ports chosen after them.
        for i, node in self.nodes.items():
            for j, addr in self.addrs.items():
                if j != i:
                    node.update_address(j, addr)

    async def leader(self, among: tuple[int, ...]) -> RaftNode:
        node = self.nodes[among[0]]

        def one_leader() -> bool:
            return sum(self.nodes[i].is_leader for i in among) == 1

        await node.wait_until(one_leader, timeout=TIMEOUT)
        leader = next(self.nodes[i] for i in among if self.nodes[i].is_leader)
        await leader.propose(b"settled")    # committed in its term: it may change the membership now
        return leader

    async def stop(self, i: int) -> None:
        await self.nodes.pop(i).stop()

    async def close(self) -> None:
        for i in list(self.nodes):
            await self.stop(i)


@pytest.fixture
async def nodes(tmp_path: Path):
    made: list[Nodes] = []

    async def make(**opts: float) -> Nodes:
        n = Nodes(tmp_path, **opts)
        made.append(n)
        await n.start_all()
        return n

    yield make
    for n in made:
        await n.close()


def removed_flag(node: RaftNode) -> Callable[[], bool]:
    return lambda: node.removed


async def elections_later(node: RaftNode, count: int) -> None:
    """Wait until `node` has ticked through `count` more maximal election timeouts."""
    target = node.ticks + count * 2 * ELECTION_TICK
    await node.wait_until(lambda: node.ticks >= target, timeout=TIMEOUT)


async def test_member_removed_while_down_learns_it_is_out_and_never_disturbs_the_others(nodes, caplog) -> None:
    caplog.set_level(logging.INFO, logger="raft.node")
    c = await nodes()
    leader = await c.leader((1, 2, 3))
    gone = next(i for i in (3, 2) if i != leader.id)
    stays = next(i for i in (1, 2, 3) if i not in (leader.id, gone))
    await c.stop(gone)
    conf = await leader.remove_member(gone)
    assert gone not in conf.voters
    await leader.propose(b"after the removal")
    # The members forget the removed node's lanes once the grace after its removal runs out.
    await leader.wait_until(lambda: gone not in leader.transport.peers, timeout=TIMEOUT)
    assert gone in leader.retired and gone not in leader.members
    term = leader.hard_state().term
    other = c.nodes[stays]

    back = await c.start(gone)                   # its log still says it is a voter of three
    assert back.voters == (1, 2, 3) or gone in back.voters
    await back.wait_until(lambda: back.removed, timeout=TIMEOUT)
    assert back.status()["removed"] is True
    assert back.role is Role.FOLLOWER

    # Quiet: several election timeouts later nobody has seen an election, and it never campaigned.
    await elections_later(leader, 3)
    assert leader.is_leader and leader.hard_state().term == term
    assert other.hard_state().term == term and other.leader == leader.id
    assert back.removed and back.role is Role.FOLLOWER and back.hard_state().term <= term
    assert back.commit_index < leader.commit_index        # nobody replicates to it
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and REMOVED_TEXT in r.getMessage()
                and f"node {gone}:" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    # Lanes opened to tell it close again once it stops talking.
    await leader.wait_until(lambda: gone not in leader.transport.peers and gone not in other.transport.peers,
                            timeout=TIMEOUT)


async def test_member_removed_while_running_knows_it_from_its_own_log(nodes) -> None:
    c = await nodes()
    leader = await c.leader((1, 2, 3))
    gone = next(i for i in (3, 2) if i != leader.id)
    removed = c.nodes[gone]
    await leader.remove_member(gone)
    await removed.wait_until(lambda: removed.removed, timeout=TIMEOUT)
    term = leader.hard_state().term
    await elections_later(leader, 3)
    assert leader.is_leader and leader.hard_state().term == term
    assert removed.removed and not removed.is_leader


async def test_a_restarted_member_still_answers_a_node_removed_before_its_snapshot(nodes) -> None:
    """The retired address book travels in snapshots: a member restarted from a snapshot taken after
    the removal can still tell the removed node."""
    c = await nodes(snapshot_every=3)
    leader = await c.leader((1, 2, 3))
    gone = next(i for i in (3, 2) if i != leader.id)
    stays = next(i for i in (1, 2, 3) if i not in (leader.id, gone))
    await c.stop(gone)
    await leader.remove_member(gone)
    for k in range(6):
        await leader.propose(f"v{k}".encode())
    other = c.nodes[stays]
    await other.wait_until(lambda: other.status()["snapshot_index"] > 0 and other.applied_index >= leader.commit_index,
                           timeout=TIMEOUT)
    await c.stop(stays)
    other = await c.start(stays)
    assert gone in other.retired and gone not in other.members
    leader = await c.leader((leader.id, stays))
    back = await c.start(gone)
    await back.wait_until(lambda: back.removed, timeout=TIMEOUT)


def test_snapshot_wrapper_keeps_retired_addresses_and_reads_old_snapshots() -> None:
    members = {1: Member(("10.0.0.1", 2377), {"node_id": "a"})}
    retired = {3: Member(("10.0.0.3", 2377), {"node_id": "c"})}
    wrapped = _unwrap_snapshot(_wrap_snapshot(members, b"app", retired))
    assert (wrapped.members, wrapped.app, wrapped.retired) == (members, b"app", retired)
    old = msgpack.packb({"members": {1: members[1].encode()}, "app": b"app"})   # before retired existed
    assert _unwrap_snapshot(old).retired == {}


async def test_members_of_a_cluster_left_behind_are_refused_and_cannot_take_over_the_new_one(tmp_path: Path) -> None:
    """Node 1 forces a new one-member cluster from its state while 2 and 3 are down; they come back
    together with their old logs, a majority of the old configuration (and, both clusters being
    young, of the same term). The new cluster refuses them: they learn they are out, and its leader
    keeps its term and its log."""
    old = Nodes(tmp_path / "old")
    await old.start_all()
    leader = await old.leader((1, 2, 3))
    await leader.propose(b"old")
    addrs = dict(old.addrs)
    await old.close()

    new_dir = str(tmp_path / "forced")
    write_refused_members(new_dir, {2: Member(addrs[2]), 3: Member(addrs[3])})
    assert read_refused_members(new_dir) == {2: Member(addrs[2]), 3: Member(addrs[3])}
    forced = RaftNode(1, new_dir, Register(), members={1: Member(addrs[1])},
                      options=NodeOptions(tick_interval=0.01, election_tick=ELECTION_TICK))
    await forced.start()
    try:
        await forced.wait_until(lambda: forced.is_leader, timeout=TIMEOUT)
        await forced.propose(b"new")
        term, commit = forced.hard_state().term, forced.commit_index
        back = [await old.start(2), await old.start(3)]
        for node in back:
            await node.wait_until(removed_flag(node), timeout=TIMEOUT)
        await elections_later(forced, 3)
        assert forced.is_leader and forced.hard_state().term == term, "the new cluster was disturbed"
        assert forced.commit_index == commit and forced.sm.value == b"new"    # type: ignore[attr-defined]
        assert not any(node.is_leader for node in back)
        assert all(node.removed and node.status()["removed"] for node in back)
    finally:
        await forced.stop()
        await old.close()
