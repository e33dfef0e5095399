"""The agent's side of the log broker: reads its containers' logs and publishes them in batches.

Theory of operation: the leader's broker sends `logs` (a subscription ID, task IDs, follow,
tail, since) and `logs_cancel` messages on the session stream; `handle()` queues them and
`serve(client)` acts on them for as long as the session lasts. `serve` owns one TaskGroup, so
ending the session ends every reader. Each (subscription, task) pair gets a reader, which copies
log entries into a bounded queue, and a sender, which publishes them with `logs.publish` in
batches of at most MAX_BATCH_ENTRIES entries or MAX_BATCH_BYTES bytes, sent at most
FLUSH_INTERVAL after their first entry. A task's last batch says `done`. A reader stops on
`logs_cancel`, on a `cancelled` reply, when a publish fails, or at the end of its log (with
follow: once the container has exited and its log is drained). With follow, a task whose
container does not exist yet is waited for while the task is assigned to this node (or for
ASSIGNMENT_GRACE, as the request and the assignment travel separately to the session).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aio import cancel_and_wait
from rpc.client import RpcClient
from rpc.errors import RpcError
from worker.executor.logs import LogEntry

log = logging.getLogger("shoal.agent.logs")

MAX_BATCH_ENTRIES = 100
MAX_BATCH_BYTES = 64 * 1024
FLUSH_INTERVAL = 0.1
ENTRY_OVERHEAD = 48             # bytes a wire entry costs besides its message
QUEUE_LIMIT = 1000
CONTAINER_POLL_INTERVAL = 0.25
ASSIGNMENT_GRACE = 5.0          # a followed task's assignment may arrive after the log request
PUBLISH_TIMEOUT = 60.0


class ContainerLogs(Protocol):
    """What the agent needs of the executor (worker.executor.executor.Executor has it)."""

    def get(self, cid: str) -> Any:
        """The container's controller, or None when it does not exist."""
        ...

    def logs(self, cid: str, *, tail: int | None = None, follow: bool = False,
             since: float | None = None) -> AsyncIterator[LogEntry]: ...


@dataclass(frozen=True)
class LogRequest:
    subscription: str
    tasks: tuple[str, ...]
    follow: bool
    tail: int | None
    since: float | None

    @staticmethod
    def from_message(message: dict[str, Any]) -> LogRequest:
        subscription, tasks = message.get("subscription"), message.get("tasks")
        tail, since = message.get("tail"), message.get("since")
        if not isinstance(subscription, str) or not subscription:
            raise ValueError("logs message without a subscription ID")
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise ValueError("logs message: tasks must be a list of task IDs")
        if tail is not None and (not isinstance(tail, int) or tail < 0):
            raise ValueError(f"logs message: bad tail {tail!r}")
        if since is not None and not isinstance(since, (int, float)):
            raise ValueError(f"logs message: bad since {since!r}")
        return LogRequest(subscription, tuple(tasks), bool(message.get("follow")), tail,
                          None if since is None else float(since))


@dataclass(frozen=True)
class _End:
    error: str = ""


class LogPublisher:
    def __init__(self, containers: ContainerLogs | None, has_task: Callable[[str], bool]) -> None:
        self._containers = containers
        self._has_task = has_task
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._readers: dict[str, dict[str, asyncio.Task[None]]] = {}   # subscription -> task -> reader

    def handle(self, message: dict[str, Any]) -> None:
        """A `logs` or `logs_cancel` message from the session stream."""
        self._inbox.put_nowait(message)

    def active(self) -> int:
        return sum(len(r) for r in self._readers.values())

    async def serve(self, client: RpcClient) -> None:
        """Act on log requests for one session; never returns (cancel it to end the session's
        readers)."""
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    message = await self._inbox.get()
                    if message.get("kind") == "logs_cancel":
                        self._cancel(str(message.get("subscription", "")))
                        continue
                    try:
                        request = LogRequest.from_message(message)
                    except ValueError as e:
                        log.warning("bad log request: %s", e)
                        continue
                    readers = self._readers.setdefault(request.subscription, {})
                    for task_id in request.tasks:
                        if task_id not in readers:
                            readers[task_id] = group.create_task(self._publish_task(client, request, task_id),
                                                                 name=f"logs {task_id}")
        finally:
            self._readers.clear()
            while not self._inbox.empty():     # requests of this session mean nothing to the next
                self._inbox.get_nowait()

    def _cancel(self, subscription: str) -> None:
        current = asyncio.current_task()
        for reader in self._readers.pop(subscription, {}).values():
            if reader is not current:
                reader.cancel()

    async def _publish_task(self, client: RpcClient, request: LogRequest, task_id: str) -> None:
        queue: asyncio.Queue[LogEntry | _End] = asyncio.Queue(QUEUE_LIMIT)
        reader = asyncio.ensure_future(self._read(request, task_id, queue))
        try:
            if await self._send(client, request, task_id, queue):
                self._cancel(request.subscription)     # nobody listens: stop the other tasks too
        except RpcError as e:
            log.info("log publish failed", extra={"task": task_id, "error": str(e)})
        except Exception:
            log.exception("log publisher of task %s failed", task_id)
        finally:
            for error in await cancel_and_wait([reader]):
                log.error("log reader of task %s failed", task_id, exc_info=error)
            readers = self._readers.get(request.subscription)
            if readers is not None:
                readers.pop(task_id, None)
                if not readers:
                    del self._readers[request.subscription]

    async def _read(self, request: LogRequest, task_id: str, queue: asyncio.Queue[LogEntry | _End]) -> None:
        try:
            error = await self._copy_log(request, task_id, queue)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            error = f"reading the log failed: {e}"
        await queue.put(_End(error))

    async def _copy_log(self, request: LogRequest, task_id: str, queue: asyncio.Queue[LogEntry | _End]) -> str:
        """Copy the task's log into `queue`; the error to report, or ""."""
        containers = self._containers
        if containers is None:
            return "this node cannot read container logs"
        loop = asyncio.get_running_loop()
        grace_until = loop.time() + ASSIGNMENT_GRACE
        while containers.get(task_id) is None:
            waiting = self._has_task(task_id) or loop.time() < grace_until
            if not (request.follow and waiting):
                return ""      # no container (never started, or removed): no log
            await asyncio.sleep(CONTAINER_POLL_INTERVAL)
        async for entry in containers.logs(task_id, tail=request.tail, follow=request.follow, since=request.since):
            await queue.put(entry)
        return ""

    async def _send(self, client: RpcClient, request: LogRequest, task_id: str,
                    queue: asyncio.Queue[LogEntry | _End]) -> bool:
        """Publish until the log ends; True when the broker says nobody listens any more."""
        loop = asyncio.get_running_loop()
        batch: list[dict[str, Any]] = []
        size = 0
        flush_at = 0.0
        while True:
            end: _End | None = None
            timed_out = False
            try:
                timeout = None if not batch else max(0.0, flush_at - loop.time())
                async with asyncio.timeout(timeout):
                    item = await queue.get()
                if isinstance(item, _End):
                    end = item
                else:
                    if not batch:
                        flush_at = loop.time() + FLUSH_INTERVAL
                    batch.append({"ts": item.timestamp, "stream": item.stream, "msg": item.message})
                    size += len(item.message) + ENTRY_OVERHEAD
            except TimeoutError:
                timed_out = True
            if end is None and not timed_out and len(batch) < MAX_BATCH_ENTRIES and size < MAX_BATCH_BYTES:
                continue
            params: dict[str, Any] = {"subscription": request.subscription, "task_id": task_id,
                                      "entries": batch, "done": end is not None}
            if end is not None and end.error:
                params["error"] = end.error
            reply = await client.call("logs.publish", params, timeout=PUBLISH_TIMEOUT)
            batch, size = [], 0
            if isinstance(reply, dict) and reply.get("cancelled"):
                return True
            if end is not None:
                return False
