"""The log broker: routes log requests to the nodes that run the tasks, and their lines back.

Theory of operation: the broker lives on the leader, owned by the leadership term like the
dispatcher, and reaches agents only through their session streams (`SessionMessenger`).
- `subscribe(selector, options)` resolves the selector against the store (a service's tasks
  that have a node: without follow only those that got as far as RUNNING, since only they have
  a log), groups the task IDs by node, and sends each node one `logs` message. A node with no
  open session is reported as a warning instead of being waited for.
- Agents answer with `logs.publish` batches (`publish`), each naming one task, which must be
  one the broker asked that node for. `done` ends a task's part. Without follow, the
  subscription finishes once every requested task is done, failed or lost.
- With follow, the broker's `run()` loop (one store watch per term) asks for the tasks of a
  followed service as they are assigned to nodes; the subscription ends only when its reader
  closes it.
- A node whose session ends loses its part: its pending tasks end with a warning.
- Closing a subscription (the reader went away) sends `logs_cancel` to every node still
  working on it; a publish for a closed subscription answers `cancelled`, so agents stop.
- When the term ends every open subscription finishes with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from manager.logbroker.channel import LogChannel
from manager.logbroker.types import LogItem, LogOptions, LogRecord, LogSelector, LogWarning, entry_from_wire
from manager.store import ReadTx, Store, WatchDropped
from model import Task, TaskState, new_id
from rpc.errors import InvalidArgument, PermissionDenied

log = logging.getLogger("shoal.logbroker")

MAX_PUBLISH_ENTRIES = 10_000


class SessionMessenger(Protocol):
    def send_to_node(self, node_id: str, message: dict[str, Any]) -> bool: ...

    def on_session_closed(self, listener: Callable[[str], None]) -> None: ...


class Subscription:
    """One reader's view of the logs of a selector. Iterate with `get()`; `close()` when done."""

    def __init__(self, subscription_id: str, selector: LogSelector, options: LogOptions,
                 on_close: Callable[[Subscription], None]) -> None:
        self.id = subscription_id
        self.selector = selector
        self.options = options
        self.channel = LogChannel()
        self.task_nodes: dict[str, str] = {}        # every task asked for -> its node
        self.pending: dict[str, set[str]] = {}      # node -> tasks not done yet
        self._services: dict[str, str] = {}        # task -> service
        self._on_close = on_close

    @property
    def ended(self) -> bool:
        return self.channel.closed or self.channel.finished

    async def get(self, timeout: float | None = None) -> list[LogItem]:
        """The next batch of items; [] if `timeout` passes; raises ChannelEnded at the end."""
        return await self.channel.get(timeout)

    def close(self) -> None:
        if not self.channel.closed:
            self.channel.close()
            self._on_close(self)

    async def aclose(self) -> None:
        self.close()

    # ---- broker side ----------------------------------------------------------------------------
    def service_of(self, task_id: str) -> str:
        return self._services.get(task_id, "")

    def add(self, node_id: str, tasks: list[Task]) -> None:
        for task in tasks:
            self.task_nodes[task.id] = node_id
            self._services[task.id] = task.service_id
            self.pending.setdefault(node_id, set()).add(task.id)

    def task_done(self, node_id: str, task_id: str) -> None:
        waiting = self.pending.get(node_id)
        if waiting is not None:
            waiting.discard(task_id)
            if not waiting:
                del self.pending[node_id]
        self.finish_if_complete()

    def node_lost(self, node_id: str, why: str) -> None:
        tasks = self.pending.pop(node_id, None)
        if tasks:
            self.warn(f"{why}: logs of task(s) {', '.join(sorted(tasks))} are incomplete")
            self.finish_if_complete()

    def warn(self, message: str) -> None:
        self.channel.put_unbounded([LogWarning(message)])

    def finish_if_complete(self) -> None:
        if not self.options.follow and not self.pending:
            self.channel.finish()


class LogBroker:
    def __init__(self, store: Store, messenger: SessionMessenger) -> None:
        self._store = store
        self._messenger = messenger
        self._subscriptions: dict[str, Subscription] = {}
        messenger.on_session_closed(self._session_closed)

    # ---- subscribers ----------------------------------------------------------------------------
    def subscribe(self, selector: LogSelector, options: LogOptions) -> Subscription:
        if not selector.service_ids and not selector.task_ids:
            raise InvalidArgument("log selector names no service and no task")
        subscription = Subscription(new_id(), selector, options, self._closed)
        self._subscriptions[subscription.id] = subscription
        tasks = self._store.view(lambda tx: _selected_tasks(tx, selector, options.follow))
        by_node: dict[str, list[Task]] = {}
        for task in tasks:
            by_node.setdefault(task.node_id, []).append(task)
        for node_id, node_tasks in sorted(by_node.items()):
            self._request(subscription, node_id, node_tasks)
        subscription.finish_if_complete()
        log.debug("log subscription", extra={"subscription": subscription.id, "tasks": len(tasks),
                                             "follow": options.follow})
        return subscription

    def open_subscriptions(self) -> int:
        return len(self._subscriptions)

    def _request(self, subscription: Subscription, node_id: str, tasks: list[Task]) -> None:
        message = {"kind": "logs", "subscription": subscription.id, "tasks": [t.id for t in tasks],
                   "follow": subscription.options.follow, "tail": subscription.options.tail,
                   "since": subscription.options.since}
        if self._messenger.send_to_node(node_id, message):
            subscription.add(node_id, tasks)
        else:
            subscription.warn(f"node {node_id} is not available: logs of task(s) "
                              f"{', '.join(t.id for t in tasks)} could not be read")

    def _closed(self, subscription: Subscription) -> None:
        self._subscriptions.pop(subscription.id, None)
        for node_id in list(subscription.pending):
            self._messenger.send_to_node(node_id, {"kind": "logs_cancel", "subscription": subscription.id})
        subscription.pending.clear()

    # ---- agents -------------------------------------------------------------------------------
    async def publish(self, node_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """A batch from an agent: {subscription, task_id, entries: [{ts, stream, msg}], done,
        error?}. Answers {"cancelled": true} when nobody reads the subscription any more."""
        subscription = self._subscriptions.get(str(params.get("subscription", "")))
        if subscription is None or subscription.ended:
            return {"cancelled": True}
        task_id = str(params.get("task_id", ""))
        if subscription.task_nodes.get(task_id) != node_id:
            raise PermissionDenied(f"node {node_id} was not asked for the logs of task {task_id}")
        raw = params.get("entries") or []
        if not isinstance(raw, list) or len(raw) > MAX_PUBLISH_ENTRIES:
            raise InvalidArgument(f"logs.publish: entries must be a list of at most {MAX_PUBLISH_ENTRIES}")
        try:
            entries = [entry_from_wire(doc) for doc in raw]
        except ValueError as e:
            raise InvalidArgument(f"logs.publish: {e}") from None
        service_id = subscription.service_of(task_id)
        batch: list[LogItem] = [LogRecord(node_id, service_id, task_id, ts, stream, msg)
                                for ts, stream, msg in entries]
        if params.get("error"):
            batch.append(LogWarning(f"task {task_id} on node {node_id}: {params['error']}"))
        if not await subscription.channel.put(batch):
            return {"cancelled": True}
        if params.get("done"):
            subscription.task_done(node_id, task_id)
        return {"cancelled": subscription.channel.closed}

    def _session_closed(self, node_id: str) -> None:
        for subscription in list(self._subscriptions.values()):
            subscription.node_lost(node_id, f"node {node_id} disconnected")

    # ---- leader-term loop -----------------------------------------------------------------------
    async def run(self) -> None:
        """Ask for the logs of followed services' tasks as they land on nodes. Runs for one
        leadership term; when it ends, every subscription ends with a warning."""
        watch = self._store.watch(tables=("tasks",))
        try:
            while True:
                try:
                    await watch.wait()
                    tasks = [e.obj for e in watch.drain() if e.op != "delete"]
                except WatchDropped:
                    watch = self._store.watch(tables=("tasks",))
                    tasks = self._store.view(lambda tx: tx.all("tasks"))
                self._follow_new(tasks)
        finally:
            watch.close()
            for subscription in list(self._subscriptions.values()):
                subscription.warn("the leader stepped down; the log stream ends here")
                subscription.channel.finish()
                self._closed(subscription)

    def _follow_new(self, tasks: list[Task]) -> None:
        for subscription in list(self._subscriptions.values()):
            if not subscription.options.follow or subscription.ended:
                continue
            services = set(subscription.selector.service_ids)
            fresh: dict[str, list[Task]] = {}
            for task in tasks:
                if (task.service_id in services and task.node_id and task.id not in subscription.task_nodes
                        and task.desired_state <= TaskState.RUNNING):
                    fresh.setdefault(task.node_id, []).append(task)
            for node_id, node_tasks in sorted(fresh.items()):
                self._request(subscription, node_id, node_tasks)


def _selected_tasks(tx: ReadTx, selector: LogSelector, follow: bool) -> list[Task]:
    chosen: dict[str, Task] = {}
    for service_id in selector.service_ids:
        for task in tx.find("tasks", service_id=service_id):
            if not task.node_id:
                continue
            if not follow and task.status.state < TaskState.RUNNING:
                continue   # never started: it has no log yet
            chosen[task.id] = task
    for task_id in selector.task_ids:
        task = tx.get("tasks", task_id)
        if task is not None and task.node_id:
            chosen[task.id] = task
    return sorted(chosen.values(), key=lambda t: (t.slot, t.node_id, t.id))
