"""Group commit of task status reports: reports arriving together are written as one store
batch, each update succeeds or fails alone, and a writer that is cancelled mid-write neither
loses nor strands the reports queued behind it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from manager.dispatcher.status import StatusBatcher
from manager.store import Store, WriteTx
from model import Task, TaskState, new_id
from rpc.errors import PermissionDenied, Unavailable
from tests.support.wait import async_wait_until


def apply_one(tx: WriteTx, node_id: str, update: dict[str, Any]) -> None:
    task = tx.get("tasks", update["task_id"])
    if task.node_id != node_id:
        raise PermissionDenied(f"task {task.id} is not on node {node_id}")
    task = task.copy()
    task.status.advance(TaskState.RUNNING, "t", "started")
    tx.update(task)


async def seeded(nodes: list[str]) -> tuple[Store, dict[str, str]]:
    store = Store()
    tasks = {n: Task(id=new_id(), service_id="s", slot=i + 1, node_id=n) for i, n in enumerate(nodes)}
    for t in tasks.values():
        t.status.advance(TaskState.ASSIGNED, "t", "assigned")
    await store.update(lambda tx: [tx.create(t) for t in tasks.values()])
    return store, {n: t.id for n, t in tasks.items()}


def state(store: Store, task_id: str) -> TaskState:
    return store.view(lambda tx: tx.get("tasks", task_id)).status.state


async def test_reports_arriving_together_are_one_write_and_fail_alone() -> None:
    nodes = [f"n{i}" for i in range(20)]
    store, task_of = await seeded(nodes)
    batcher = StatusBatcher(store, apply_one)
    first = store.index
    results = await asyncio.gather(*(batcher.submit(n, [{"task_id": task_of[n]}]) for n in nodes),
                                   batcher.submit("n0", [{"task_id": task_of["n1"]}]))  # not n0's task
    assert results == [1] * 20 + [0]
    assert batcher.writes == 1 and store.index == first + 1
    assert all(state(store, task_of[n]) == TaskState.RUNNING for n in nodes)


class GatedProposer:
    """Applies a proposal only once `gate` is set; `entered` tells a write is in progress."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def propose(self, data: bytes) -> None:
        self.entered.set()
        await self.gate.wait()
        self.store.apply(data)


async def test_a_cancelled_writer_fails_its_reports_and_hands_over_the_queue() -> None:
    store, task_of = await seeded(["a", "b", "c"])
    gated = GatedProposer(store)
    store.proposer = gated
    batcher = StatusBatcher(store, apply_one)
    writer = asyncio.create_task(batcher.submit("a", [{"task_id": task_of["a"]}]))
    await gated.entered.wait()  # a's report is being written, nothing else queued
    queued = [asyncio.create_task(batcher.submit(n, [{"task_id": task_of[n]}])) for n in ("b", "c")]
    async def both_queued() -> bool:  # b and c wait behind the write in progress
        return len(batcher._queue) == 2

    await async_wait_until(both_queued, what="b and c queued")
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    gated.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*queued), 5) == [1, 1]  # b took over the writing
    assert state(store, task_of["b"]) == state(store, task_of["c"]) == TaskState.RUNNING
    assert state(store, task_of["a"]) == TaskState.ASSIGNED  # cancelled with its write: resent later


async def test_an_interrupted_report_of_another_caller_is_told_to_resend() -> None:
    store, task_of = await seeded(["a", "b"])
    gated = GatedProposer(store)
    store.proposer = gated
    batcher = StatusBatcher(store, apply_one)
    # a and b report in the same turn: a writes both; a is cancelled mid-write.
    writer = asyncio.create_task(batcher.submit("a", [{"task_id": task_of["a"]}]))
    other = asyncio.create_task(batcher.submit("b", [{"task_id": task_of["b"]}]))
    await gated.entered.wait()
    writer.cancel()
    with pytest.raises(Unavailable, match="report again"):
        await asyncio.wait_for(other, 5)
    gated.gate.set()
