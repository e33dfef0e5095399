"""The leader applies its own proposals from the changes it encoded, without decoding them
again; a follower decodes every entry. Both must end in the same state after a whole service
lifecycle (create, place, run, scale, update, node down, remove)."""

from __future__ import annotations

from typing import Any

from bench.support.swarm_sim import Harness, make_node
from manager.specs import normalize_service_spec
from manager.store import Store, WriteTx
from model import Service, new_id


class ReplicatingProposer:
    """Commits each entry at the next index: the leader gets its own bytes object back, as from
    Raft's in-memory log; the follower a copy, as from the network."""

    def __init__(self, leader: Store, follower: Store) -> None:
        self.leader, self.follower = leader, follower
        self.index = 0
        self.fast = 0

    async def propose(self, data: bytes) -> None:
        self.index += 1
        if id(data) in self.leader._proposed:
            self.fast += 1
        self.leader.apply(data, self.index)
        self.follower.apply(bytes(bytearray(data)), self.index)


def state(store: Store) -> dict[str, Any]:
    return store.view(lambda tx: {"index": tx.index, **{
        table: {o.id: o.to_record() for o in tx.all(table)}
        for table in ("clusters", "nodes", "services", "tasks", "networks", "secrets", "configs")}})


async def test_leader_fast_apply_and_follower_decode_reach_the_same_state() -> None:
    harness = Harness()
    leader, follower = harness.store, Store()
    proposer = ReplicatingProposer(leader, follower)
    leader.proposer = proposer
    nodes = [make_node(f"n{i}") for i in range(4)]
    await leader.update(lambda tx: [tx.create(n) for n in nodes])
    harness.store.view(harness.scheduler.load)
    spec = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Env": ["A=1"]},
                                            "RestartPolicy": {"Condition": "any", "Delay": 0}},
            "Mode": {"Replicated": {"Replicas": 6}},
            "UpdateConfig": {"Parallelism": 2, "Delay": 0, "Monitor": 0}}
    service = Service(id=new_id(), spec=normalize_service_spec(spec))
    await leader.update(lambda tx: tx.create(service))
    await harness.settle()

    def edit(change: Any) -> Any:
        async def run() -> None:
            def fn(tx: WriteTx) -> None:
                svc = tx.get("services", service.id).copy()
                change(svc)
                tx.update(svc)
            await leader.update(fn)
        return run()

    await edit(lambda svc: svc.spec["Mode"]["Replicated"].update(Replicas=9))
    await harness.settle()
    await edit(lambda svc: svc.spec["TaskTemplate"]["ContainerSpec"].update(Env=["A=2"]))
    for _ in range(20):
        await harness.advance(1)
        await harness.settle()
    midway = state(leader)
    assert midway == state(follower)
    assert sum(t["status"][0] == 512 and t["spec"]["ContainerSpec"]["Env"] == ["A=2"]
               for t in midway["tasks"].values()) == 9  # the update ran all nine on the new spec

    def down(tx: WriteTx) -> None:
        node = tx.get("nodes", nodes[0].id).copy()
        node.status = {**node.status, "State": "down"}
        tx.update(node)

    await leader.update(down)
    await harness.settle()
    await leader.update(lambda tx: tx.delete("services", service.id))
    await harness.settle()

    assert proposer.fast == proposer.index > 50  # every entry took the leader's fast path
    assert state(leader) == state(follower)
