"""Task status reports from every node, written to the store together (group commit).

Theory of operation: each `submit(node_id, updates)` queues its report and waits for its own
result. Whoever finds no write in progress becomes the writer: it takes everything queued, lets
the loop turn once so reports arriving together join, writes them as one `Store.batch` (each
update succeeds or fails alone; the batch splits into proposals of bounded size), resolves each
report's future, and repeats while reports are queued. So with a thousand nodes reporting, the
store sees a few large proposals instead of one per node, and no background task is needed.

A writer that is cancelled (its caller went away) fails the reports it had taken with
Unavailable (the agent resends) and hands the writing over to one of the reports still queued,
so no report waits forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from manager.store import Batch, Store, WriteTx
from rpc.errors import Unavailable

ApplyOne = Callable[[WriteTx, str, dict[str, Any]], None]
_YOUR_TURN = object()  # a report's future resolved with this: its submitter becomes the writer


class _Report:
    __slots__ = ("future", "node_id", "updates")

    def __init__(self, node_id: str, updates: list[dict[str, Any]], future: asyncio.Future[Any]) -> None:
        self.node_id = node_id
        self.updates = updates
        self.future = future


class StatusBatcher:
    def __init__(self, store: Store, apply_one: ApplyOne) -> None:
        self._store = store
        self._apply_one = apply_one
        self._queue: list[_Report] = []
        self._writing = False
        self.writes = 0  # store batches written (for tests and benchmarks)

    async def submit(self, node_id: str, updates: list[dict[str, Any]]) -> int:
        """Write `updates` of `node_id`; returns how many were applied (the rest failed alone)."""
        loop = asyncio.get_running_loop()
        report = _Report(node_id, updates, loop.create_future())
        self._queue.append(report)
        while True:
            if not self._writing:
                await self._write_queued()
            result = await report.future
            if result is not _YOUR_TURN:
                return int(result)
            report.future = loop.create_future()

    async def _write_queued(self) -> None:
        self._writing = True
        taken: list[_Report] = []
        try:
            while self._queue:
                await asyncio.sleep(0)  # reports arriving in this same turn join the batch
                taken, self._queue = self._queue, []
                result = await self._store.batch(self._queue_updates(taken))
                position = 0
                for report in taken:
                    errors = result.errors[position:position + len(report.updates)]
                    position += len(report.updates)
                    if not report.future.done():
                        report.future.set_result(sum(error is None for error in errors))
                taken = []
                self.writes += 1
        finally:
            self._writing = False
            for report in taken:  # interrupted mid-write: the outcome is unknown, ask for a resend
                if not report.future.done():
                    report.future.set_exception(Unavailable("status write interrupted; report again"))
            for report in self._queue:
                if not report.future.done():
                    report.future.set_result(_YOUR_TURN)
                    break

    def _queue_updates(self, reports: list[_Report]) -> Callable[[Batch], None]:
        apply_one = self._apply_one

        def fill(batch: Batch) -> None:
            queue = batch.update
            for report in reports:
                node_id = report.node_id
                for update in report.updates:
                    queue(lambda tx, node_id=node_id, update=update: apply_one(tx, node_id, update))  # type: ignore[misc]
        return fill
