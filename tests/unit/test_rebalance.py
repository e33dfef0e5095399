"""Rebalancing (manager/orchestrator/rebalance.py) on the in-memory swarm harness: tasks move,
one start-first move at a time, onto nodes that joined, and never below the wanted count of
running tasks; only when the swarm or the service asks for it."""

from __future__ import annotations

import copy
from collections import Counter

from bench.support.swarm_sim import Harness, make_node
from manager.orchestrator.rebalance import REQUEST_LABEL
from manager.specs import normalize_service_spec
from model import Cluster, Node, Service, TaskState, new_id

SEC = 1_000_000_000


async def start(replicas: int, nodes: int, *, swarm_wide: bool) -> tuple[Harness, Service]:
    h = Harness()
    spec = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "app:1"}},
            "Mode": {"Replicated": {"Replicas": replicas}}, "UpdateConfig": {"Delay": 1 * SEC}}
    svc = Service(id=new_id(), spec=normalize_service_spec(spec))
    cluster = Cluster(id=new_id(), spec={"Orchestration": {"Rebalance": swarm_wide}})
    made = [make_node(f"n{i}") for i in range(nodes)]
    await h.store.update(lambda tx: [tx.create(cluster), *(tx.create(n) for n in made), tx.create(svc)])
    await h.settle()
    return h, svc


def running(h: Harness, svc: Service) -> list:
    return [t for t in h.store.view(lambda tx: tx.find("tasks", service_id=svc.id))
            if t.status.state == TaskState.RUNNING and t.desired_state <= TaskState.RUNNING]


def spread(h: Harness, svc: Service) -> list[int]:
    hosts = h.store.view(lambda tx: {n.id: n.hostname for n in tx.all("nodes")})
    counts = Counter(hosts[t.node_id] for t in running(h, svc))
    return sorted((counts.get(name, 0) for name in hosts.values()), reverse=True)


async def join(h: Harness, *names: str) -> list[Node]:
    made = [make_node(name) for name in names]
    await h.store.update(lambda tx: [tx.create(n) for n in made])
    return made


async def run(h: Harness, svc: Service, seconds: float, floor: int) -> None:
    """Rounds with virtual time passing; after every round at least `floor` tasks run."""
    for _ in range(int(seconds * 4)):
        for _ in range(50):
            changed = await h.round()
            assert len(running(h, svc)) >= floor, "fewer tasks running than the service wants"
            if not changed:
                break
        await h.advance(0.25)


async def test_tasks_move_onto_nodes_that_join_one_at_a_time_never_below_the_count() -> None:
    h, svc = await start(4, 2, swarm_wide=True)
    assert spread(h, svc) == [2, 2]
    await join(h, "n2", "n3")
    await run(h, svc, 10, floor=4)
    assert spread(h, svc) == [1, 1, 1, 1]
    assert h.replicated.rebalances.moved == 2
    assert sorted(t.slot for t in running(h, svc)) == [1, 2, 3, 4]


async def test_nothing_moves_unless_asked() -> None:
    h, svc = await start(4, 2, swarm_wide=False)
    await join(h, "n2", "n3")
    await run(h, svc, 5, floor=4)
    assert spread(h, svc) == [2, 2, 0, 0]


async def test_a_service_request_is_acted_on_once() -> None:
    h, svc = await start(4, 1, swarm_wide=False)
    await join(h, "n1")

    def ask(tx) -> None:
        current = tx.get("services", svc.id).copy()
        current.spec = copy.deepcopy(current.spec)
        current.spec["Labels"][REQUEST_LABEL] = "1"
        tx.update(current)

    await h.store.update(ask)
    await run(h, svc, 10, floor=4)
    assert spread(h, svc) == [2, 2]
    await join(h, "n2", "n3")          # the request was done: a later join moves nothing
    await run(h, svc, 5, floor=4)
    assert spread(h, svc) == [2, 2, 0, 0]


async def test_a_move_a_former_leader_left_half_done_is_finished() -> None:
    h, svc = await start(2, 2, swarm_wide=True)
    [extra] = [t for t in running(h, svc) if t.slot == 1]
    twin = extra.copy()
    twin.id = new_id()                                   # the replacement a former leader made
    await h.store.update(lambda tx: tx.create(twin))
    assert len(running(h, svc)) == 3                     # slot 1 holds two running tasks
    await run(h, svc, 3, floor=2)
    assert len(running(h, svc)) == 2 and sorted(t.slot for t in running(h, svc)) == [1, 2]
