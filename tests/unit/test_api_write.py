"""API writes run again when their entry loses to one their store had not applied yet: a
follower manager's copy of the store can be a little behind the leader's, and a write made
there (a service removal that also marks the service's tasks) would otherwise fail "update out
of sequence" on an object the leader had just changed, although the client sent no version."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from manager.api.cluster import write
from manager.store import StaleVersion, Store, WriteTx
from model import Service, Task, TaskState, new_id


class LaggingFollower:
    """Commits every entry on both stores in log order, but the follower applies the leader's
    entries only when it proposes one of its own (before its own): its memory lags."""

    def __init__(self, leader: Store, follower: Store) -> None:
        self.leader, self.follower = leader, follower
        self.index = 0
        self.held: list[tuple[bytes, int]] = []

    def catch_up(self) -> None:
        for data, index in self.held:
            self.follower.apply(data, index)
        self.held.clear()

    async def propose(self, data: bytes) -> None:
        self.index += 1
        if id(data) in self.follower._proposed:
            self.catch_up()
            self.leader.apply(bytes(bytearray(data)), self.index)
            self.follower.apply(data, self.index)
        else:
            self.leader.apply(data, self.index)
            self.held.append((bytes(bytearray(data)), self.index))


def remove_service(service_id: str) -> Callable[[WriteTx], None]:
    """What DELETE /services/{id} writes: the service goes, its tasks are marked for removal."""
    def remove(tx: WriteTx) -> None:
        tx.delete("services", service_id)
        for task in tx.find("tasks", service_id=service_id):
            doomed = task.copy()
            doomed.set_desired_state(TaskState.REMOVE)
            tx.update(doomed)
    return remove


async def lagging_pair() -> tuple[Store, Store, str]:
    leader, follower = Store(), Store()
    replication = LaggingFollower(leader, follower)
    leader.proposer = follower.proposer = replication
    service = Service(id=new_id(), spec={"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
                                         "Mode": {"Replicated": {"Replicas": 1}}})
    task = Task(id=new_id(), service_id=service.id)
    await leader.update(lambda tx: (tx.create(service), tx.create(task)))
    replication.catch_up()

    def report(tx: WriteTx) -> None:        # the dispatcher records the worker's status: a new version
        updated = tx.get("tasks", task.id).copy()
        updated.node_id = "node-1"
        tx.update(updated)

    await leader.update(report)              # not yet applied by the follower
    return leader, follower, service.id


async def test_a_write_on_a_lagging_follower_runs_again_and_succeeds() -> None:
    leader, follower, service_id = await lagging_pair()
    await write(follower, remove_service(service_id))
    for store in (leader, follower):
        assert store.view(lambda tx: tx.get("services", service_id)) is None
        assert [t.desired_state for t in store.view(lambda tx: tx.find("tasks", service_id=service_id))] \
            == [TaskState.REMOVE]


async def test_without_running_again_the_same_write_fails() -> None:
    _, follower, service_id = await lagging_pair()
    with pytest.raises(StaleVersion):
        await follower.update(remove_service(service_id))
