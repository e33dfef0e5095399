"""RaftNode driver: real WAL, real TCP on loopback, real cores, several nodes in one event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from raft.node import Member, NodeOptions, NodeStopped, RaftNode
from raft.types import Entry, NotLeader, Role


class Counter:
    """A tiny state machine: a dict of key → value; apply returns the number of applied writes."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0

    def apply(self, entry: Entry) -> int:
        key, value = msgpack.unpackb(entry.data)
        if value == "poison":
            raise ValueError(f"refusing to store poison under {key}")
        self.data[key] = value
        self.applied += 1
        return self.applied

    def snapshot(self) -> bytes:
        return msgpack.packb([self.data, self.applied])

    def restore(self, data: bytes) -> None:
        self.data, self.applied = msgpack.unpackb(data)


def put(key: str, value: str) -> bytes:
    return msgpack.packb([key, value])


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


class Cluster:
    def __init__(self, root: Path, n: int, **opts) -> None:
        self.root = root
        self.opts = {"tick_interval": 0.01, "election_tick": 10, **opts}
        self.ids = list(range(1, n + 1))
        self.nodes: dict[int, RaftNode] = {}
        self.sms: dict[int, Counter] = {}
        self.addrs: dict[int, tuple[str, int]] = {}

    def make(self, i: int, *, bootstrap: bool = True, **extra) -> RaftNode:
        members = {j: Member(self.addrs.get(j, ("127.0.0.1", 0))) for j in self.ids}
        self.sms[i] = Counter()
        node = RaftNode(i, str(self.root / f"n{i}"), self.sms[i], members=members, bootstrap=bootstrap,
                        options=NodeOptions(**{**self.opts, **extra}))
        self.nodes[i] = node
        return node

    async def start(self, i: int, **kw) -> RaftNode:
        node = self.make(i, **kw)
        self.addrs[i] = await node.start()
        for j, other in self.nodes.items():
            if j != i:
                other.update_address(i, self.addrs[i])
                node.update_address(j, self.addrs[j])
        return node

    async def leader(self) -> RaftNode:
        await until(lambda: sum(n.is_leader for n in self.nodes.values()) == 1)
        return next(n for n in self.nodes.values() if n.is_leader)

    async def stop(self, i: int) -> None:
        await self.nodes.pop(i).stop()

    async def close(self) -> None:
        for i in list(self.nodes):
            await self.stop(i)


@pytest.fixture
async def cluster(tmp_path: Path):
    clusters: list[Cluster] = []

    async def make(n: int = 3, **opts) -> Cluster:
        c = Cluster(tmp_path, n, **opts)
        clusters.append(c)
        for i in c.ids:
            await c.start(i)
        return c

    yield make
    for c in clusters:
        await c.close()


async def test_replicates_reads_linearizably_and_redirects_followers(cluster) -> None:
    c = await cluster(3)
    leader = await c.leader()
    results = [await leader.propose(put(f"k{i}", f"v{i}")) for i in range(5)]
    assert results == [1, 2, 3, 4, 5]
    follower = next(n for n in c.nodes.values() if not n.is_leader)
    with pytest.raises(NotLeader) as err:
        await follower.propose(put("x", "y"))
    assert err.value.leader == leader.id
    await follower.read_index()          # forwarded to the leader, then waits for the apply
    assert c.sms[follower.id].data["k4"] == "v4"
    st = follower.status()
    assert st["leader"] == leader.id and st["role"] == Role.FOLLOWER.value


async def test_concurrent_proposals_share_fsyncs(cluster, tmp_path: Path) -> None:
    fsyncs = 0

    def counting(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        os.fdatasync(fd)

    c = await cluster(3, fsync=counting)
    leader = await c.leader()
    await leader.propose(put("warm", "up"))
    fsyncs = 0
    n = 100
    await asyncio.gather(*(leader.propose(put(f"k{i}", "v")) for i in range(n)))
    # Three nodes each persist; without batching that is >= 3 * n fsyncs.
    assert fsyncs < n, fsyncs
    await until(lambda: all(sm.data.get("k99") == "v" for sm in c.sms.values()))


async def test_restart_recovers_from_wal_and_snapshot_and_failover(cluster) -> None:
    c = await cluster(3, snapshot_every=20)
    leader = await c.leader()
    for i in range(50):
        await leader.propose(put(f"k{i}", str(i)))
    old = leader.id
    await c.stop(old)
    new_leader = await c.leader()
    assert new_leader.id != old
    await new_leader.propose(put("after", "failover"))
    node = await c.start(old)           # restarts from its snapshot + WAL, then catches up
    await until(lambda: c.sms[old].data.get("after") == "failover")
    assert all(c.sms[old].data[f"k{i}"] == str(i) for i in range(50))
    assert node.status()["snapshot_index"] >= 20


async def test_new_member_joins_and_catches_up_by_snapshot_then_is_removed(cluster) -> None:
    c = await cluster(3, snapshot_every=10)
    leader = await c.leader()
    for i in range(30):
        await leader.propose(put(f"k{i}", str(i)))
    c.ids.append(4)
    joiner = await c.start(4, bootstrap=False)
    conf = await leader.add_member(4, Member(c.addrs[4], {"http": "127.0.0.1:1"}))
    assert 4 in conf.voters
    await until(lambda: c.sms[4].data.get("k29") == "29")
    assert joiner.members[leader.id].raft == c.addrs[leader.id]
    assert joiner.status()["snapshot_index"] >= 10      # it was sent a snapshot, not the whole log
    await leader.propose(put("with4", "yes"))
    await until(lambda: c.sms[4].data.get("with4") == "yes")
    conf = await leader.remove_member(4)
    assert 4 not in conf.voters and 4 not in conf.learners


async def test_apply_errors_reach_the_proposer_and_stop_fails_pending_work(cluster) -> None:
    c = await cluster(3)
    leader = await c.leader()
    with pytest.raises(ValueError, match="poison under k"):
        await leader.propose(put("k", "poison"))
    assert await leader.propose(put("k", "fine")) == 1     # every replica skipped the bad entry alike
    await until(lambda: all(sm.data.get("k") == "fine" for sm in c.sms.values()))
    # Stop both followers: the leader cannot commit; stopping it fails the waiting proposal.
    for i in [i for i in c.nodes if i != leader.id]:
        await c.stop(i)
    last = leader.status()["last_index"]
    pending = asyncio.ensure_future(leader.propose(put("never", "committed")))
    await until(lambda: leader.status()["last_index"] == last + 1)      # appended, cannot commit
    await c.stop(leader.id)
    with pytest.raises(NodeStopped):
        await pending
    with pytest.raises(NodeStopped):
        await leader.propose(put("late", "x"))


async def test_leader_replicates_during_its_own_fsync_but_acks_only_after_it(tmp_path: Path) -> None:
    import threading

    gates = {i: threading.Event() for i in (1, 2, 3)}

    def gated_fsync(i: int) -> Callable[[int], None]:
        def fsync(fd: int) -> None:
            gates[i].wait(timeout=10)
            os.fdatasync(fd)
        return fsync

    for g in gates.values():
        g.set()
    # Elections 0.5-1 s apart: on a loaded machine a 100 ms one can elect a follower meanwhile,
    # which would then commit and apply the entry by itself (not what this test is about).
    c = Cluster(tmp_path, 3, election_tick=50)
    try:
        for i in c.ids:
            await c.start(i, fsync=gated_fsync(i))
        leader = await c.leader()
        term = leader.status()["term"]
        await leader.propose(put("warm", "up"))
        gates[leader.id].clear()                    # the leader's disk now hangs
        target = leader.status()["last_index"] + 1
        pending = asyncio.ensure_future(leader.propose(put("k", "v")))
        followers = [n for n in c.nodes.values() if n is not leader]
        # The followers receive (and durably store) the entry while the leader's write is stuck...
        await until(lambda: all(f.status()["last_index"] >= target for f in followers))
        # The leader's core already counts the entry as committed (its own copy + the acks)...
        await until(lambda: leader.commit_index >= target)
        # ...yet through several heartbeat intervals, no commit index leaks out before its write.
        ticks = {f.id: f.ticks for f in followers}
        await until(lambda: all(f.ticks >= ticks[f.id] + 5 for f in followers))
        assert not pending.done()
        assert all(f.status()["term"] == term for f in followers), "an election happened meanwhile"
        assert all(c.sms[f.id].data.get("k") is None for f in followers)    # ...but nobody applies it
        gates[leader.id].set()
        assert await pending == 2
        await until(lambda: all(sm.data.get("k") == "v" for sm in c.sms.values()))
    finally:
        for g in gates.values():
            g.set()
        await c.close()


async def test_a_failed_fsync_stops_the_node_and_fails_its_callers(tmp_path: Path) -> None:
    broken: set[int] = set()

    def fsync_of(i: int) -> Callable[[int], None]:
        def fsync(fd: int) -> None:
            if i in broken:
                raise OSError(5, "Input/output error")
            os.fdatasync(fd)
        return fsync

    c = Cluster(tmp_path, 3)
    try:
        for i in c.ids:
            await c.start(i, fsync=fsync_of(i))
        leader = await c.leader()
        await leader.propose(put("a", "1"))
        broken.add(leader.id)
        with pytest.raises(NodeStopped, match="Input/output error"):
            await leader.propose(put("b", "2"))
        assert leader.failed.is_set() and isinstance(leader.fatal, BaseExceptionGroup | OSError)
        with pytest.raises(NodeStopped):
            await leader.propose(put("c", "3"))
        # The others elect a new leader and carry on.
        await until(lambda: any(n.is_leader for n in c.nodes.values() if n is not leader))
    finally:
        await c.close()
