"""The agent: a worker's session with the dispatcher, its task runners and status reporting.

Theory of operation:
- One session at a time, with the leader's dispatcher. The agent tries the leader it was told
  of first, then every manager it knows; a manager that is not the leader answers with the
  leader's address. The manager list arrives on the session stream and is saved through
  `on_managers`, so the agent fails over to a live manager within seconds of losing one.
- Heartbeats go every `period`; a heartbeat that fails ends the session and starts the search.
- Assignments: a complete set (in chunks) replaces what the agent runs; increments follow.
  Each task has a runner, owned by the agent's TaskGroup; a task that leaves the set is
  stopped and its container removed. A task container the agent has no runner for (one left
  running across a daemon restart whose task the cluster meanwhile replaced or removed) is
  killed and removed after each complete set that lacks its task (`leftover_containers` lists
  them), as swarmkit's worker does with the tasks of its local store.
- Status updates are queued per task (only the newest counts) and sent in batches over the
  current session; what could not be sent stays queued for the next session.
- Secrets and configs ride on the assignment messages of the tasks that use them; they are kept
  in `dependencies` (see dependencies.py) before those tasks reach their runners, bound to the
  tasks, released when a runner ends, and pruned to what each complete set brings.
- `logs`/`logs_cancel` messages go to the LogPublisher (logs.py), which serves them for as long
  as the session lasts.
- `networks` messages update the node's `NetworkViews` (worker/networking.py); one loop makes the
  data path match the latest views (coalesced: it applies the newest state, never a backlog;
  a failure is retried after a growing pause), and after each complete assignment set drops the
  sandboxes of tasks the node no longer has. Once `sync` has returned for views that include
  networks message `seq` of the session, the agent acknowledges it (`dispatcher.networks_applied`):
  the manager holds a task's stop until the nodes using its networks have applied its leaving
  the rotation (manager/dispatcher/drain.py). One acknowledgement in flight, the newest seq wins;
  without a data path to program (no `networking`) a message is applied when it arrives.
- Stopping: the agent is cancelled. Nothing below it bounds an await with `asyncio.wait_for`,
  which in Python 3.11 drops a cancel that races with the awaited operation finishing (that is
  how a leave once waited forever for an agent whose connect had just completed); bounds are
  `asyncio.timeout` scopes, which never lose one. Runners are cancelled with it and leave their
  containers running (a restarted daemon re-adopts them);
  leaving the swarm is another matter: `remove_task_containers` then kills and removes the
  containers of every task the agent ran, as Docker does on `swarm leave`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aio import Backoff, cancel_and_wait
from model import Task, TaskStatus
from rpc.client import RpcClient
from rpc.errors import NotLeaderError, RpcError
from worker.agent.dependencies import Dependencies
from worker.agent.logs import ContainerLogs, LogPublisher
from worker.agent.task_runner import TaskRunner
from worker.exec import TaskExecutor, is_temporary
from worker.networking import NetworkViews, TaskNetworking

log = logging.getLogger("shoal.agent")

REPORT_INTERVAL = 0.05
MAX_BACKOFF = 2.0
REMOVE_RETRY = 0.2      # seconds between attempts to remove a container after a temporary error
REMOVE_ATTEMPTS = 4     # attempts to remove a container whose removal fails for another reason
ACK_TIMEOUT = 5.0       # seconds an acknowledgement of applied networks may take
LEFTOVER_TIMEOUT = 20.0 # seconds to kill and remove the containers of tasks a complete set lacks


class Agent:
    def __init__(self, node_id: str, managers: list[str], ssl_context: Callable[[], ssl.SSLContext],
                 executor: TaskExecutor, description: Callable[[], dict[str, Any]], addr: str,
                 on_managers: Callable[[list[str]], None] | None = None,
                 on_node: Callable[[dict[str, Any]], None] | None = None,
                 logs: ContainerLogs | None = None, dependencies: Dependencies | None = None,
                 networking: TaskNetworking | None = None,
                 leftover_containers: Callable[[], Awaitable[list[str]]] | None = None) -> None:
        self.node_id = node_id
        self._leftover_containers = leftover_containers   # task IDs of the node's task containers
        self.managers = list(managers)
        self._ssl_context = ssl_context
        self._executor = executor
        self._description = description
        self._addr = addr
        self._on_managers = on_managers
        self._on_node = on_node
        self.dependencies = dependencies if dependencies is not None else Dependencies()
        self._leader_hint = ""
        self._runners: dict[str, TaskRunner] = {}
        self._runner_tasks: dict[str, asyncio.Task[None]] = {}
        self._pending_status: dict[str, TaskStatus] = {}
        self._status_ready = asyncio.Event()
        self._client: RpcClient | None = None
        self._session_id = ""
        self._complete_seen: set[str] | None = None   # task IDs of a complete set being received
        self._group: asyncio.TaskGroup | None = None
        self.connected = asyncio.Event()
        self.connected_to = ""
        self.logs = LogPublisher(logs, lambda task_id: task_id in self._runners)
        self.networking = networking
        self.network_views = NetworkViews()
        self._network_work = asyncio.Event()      # views changed, or a complete set arrived
        self._retain_due = False
        self._network_received: tuple[str, int] = ("", 0)   # (session, seq) of the newest networks message
        self._network_applied: tuple[str, int] = ("", 0)    # ... of the newest the data path has applied
        self._ack_due = asyncio.Event()

    # ---- lifetime -----------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self._report_loop(), name="agent-reporter")
            group.create_task(self._ack_loop(), name="agent-network-acks")
            if self.networking is not None:
                group.create_task(self._network_loop(self.networking), name="agent-networks")
            await self._session_loop()

    def _candidates(self) -> list[str]:
        ordered = [self._leader_hint] if self._leader_hint else []
        others = [m for m in self.managers if m != self._leader_hint]
        random.shuffle(others)
        return ordered + others

    async def _session_loop(self) -> None:
        """Find the leader and hold a session with it, for ever. `tried` holds the managers that
        failed or answered "not the leader" since the last pause: a follower names the old leader
        until the election is over (its lease), and going back to a dead leader at each such
        answer was a tight loop of TLS handshakes on every node (~50 a second per agent) just
        while the managers elect. So between pauses each manager is asked once; when all were,
        the agent pauses (growing, with jitter, up to MAX_BACKOFF) and asks all again. An opened
        session, however it ends, resets that: the pause starts again from its shortest."""
        backoff = Backoff(first=0.1, ceiling=MAX_BACKOFF)
        tried: set[str] = set()
        while True:
            for addr in self._candidates():
                if addr in tried:
                    continue
                try:
                    await self._session(addr)
                except NotLeaderError as e:
                    hint = str(e.details.get("leader_addr") or "")
                    log.info("not the leader", extra={"manager": addr, "leader": hint})
                    tried.add(addr)  # it would say the same again before the pause
                    if hint and hint not in tried:
                        self._leader_hint = hint
                        break  # go straight to the leader
                    # the leader it names failed just now: an election is under way; ask the others
                except (RpcError, OSError, ssl.SSLError) as e:
                    log.info("session ended", extra={"manager": addr, "error": str(e)})
                    tried.add(addr)
                    if self._leader_hint == addr:
                        self._leader_hint = ""
                except Exception:
                    log.exception("session with %s failed", addr)
                    tried.add(addr)
                    if self._leader_hint == addr:
                        self._leader_hint = ""
                finally:
                    if self._session_id:  # a session was open: whatever ended it, search afresh
                        backoff.reset()
                        tried.clear()
                    self._client, self._session_id = None, ""
                    self.connected.clear()
            else:
                await asyncio.sleep(backoff.next_delay())
                tried.clear()

    async def _session(self, addr: str) -> None:
        async with RpcClient(addr, self._ssl_context(), connect_timeout=3) as client:
            stream = client.stream("dispatcher.session", {"description": self._description(), "addr": self._addr})
            hello = await anext(aiter(stream))
            self._session_id = str(hello["session_id"])
            period = float(hello.get("heartbeat_period", 5.0))
            self._client = client
            self._leader_hint = addr
            self.connected_to = addr
            self.connected.set()
            self._status_ready.set()
            log.info("session open", extra={"manager": addr, "session": self._session_id})
            await first_failure(self._heartbeats(client, period), self._consume(stream), self.logs.serve(client))

    async def _consume(self, stream: Any) -> None:
        async for message in stream:
            self._handle(message)
        raise RpcError("session stream ended")

    async def _heartbeats(self, client: RpcClient, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            reply = await client.call("dispatcher.heartbeat", {"session_id": self._session_id}, timeout=period)
            period = float(reply.get("period", period))

    # ---- assignments --------------------------------------------------------------------------
    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == "managers":
            addrs = [m["addr"] for m in message.get("managers") or []]
            if addrs:
                self.managers = addrs
                if self._on_managers is not None:
                    self._on_managers(addrs)
        elif kind == "node":
            if self._on_node is not None:
                self._on_node(message)
        elif kind in ("logs", "logs_cancel"):
            self.logs.handle(message)
        elif kind == "networks":
            for problem in self.network_views.apply(message):
                log.warning("network view dropped: %s", problem)
            seq = message.get("seq")
            if isinstance(seq, int):
                self._network_received = (self._session_id, seq)
                if self.networking is None:
                    self._networks_applied(self._network_received)
            self._network_work.set()
        elif kind == "assignments":
            complete = message.get("type") == "complete"
            if complete:
                self.dependencies.begin_complete_set()
            if "secrets" in message or "configs" in message:
                for problem in self.dependencies.add(message.get("secrets"), message.get("configs")):
                    log.warning("assignment dependency dropped: %s", problem)
            if complete:
                self._complete_chunk(message)
                if not message.get("more"):
                    self.dependencies.end_complete_set()
            else:
                for change in message.get("changes") or []:
                    if change.get("action") == "remove":
                        self._unassign(str(change["task_id"]))
                    else:
                        self._assign(Task.from_record(change["task"]))

    def _complete_chunk(self, message: dict[str, Any]) -> None:
        if self._complete_seen is None:
            self._complete_seen = set()
        for record in message.get("tasks") or []:
            task = Task.from_record(record)
            self._complete_seen.add(task.id)
            self._assign(task)
        if not message.get("more"):
            for task_id in set(self._runners) - self._complete_seen:
                self._unassign(task_id)
            if self._leftover_containers is not None and self._group is not None:
                self._group.create_task(self._remove_leftovers(self._complete_seen), name="agent-leftovers")
            self._complete_seen = None
            self._retain_due = True
            self._network_work.set()

    async def _remove_leftovers(self, assigned: set[str]) -> None:
        """Kill and remove the task containers of tasks neither in the complete set `assigned`
        nor run by a runner (bounded; a failure is logged and the next complete set tries again)."""
        assert self._leftover_containers is not None
        try:
            found = await self._leftover_containers()
        except Exception as e:
            log.warning("listing the node's task containers: %s", e)
            return
        stale = sorted(t for t in found if t not in assigned and t not in self._runners)
        if stale:
            log.info("removing the containers of tasks this node no longer has", extra={"tasks": stale})
            await remove_task_containers(self._executor, stale, LEFTOVER_TIMEOUT)

    def _assign(self, task: Task) -> None:
        self.dependencies.bind(task)
        runner = self._runners.get(task.id)
        if runner is not None:
            runner.update(task)
            return
        assert self._group is not None, "assignments arrive only while the agent runs"
        runner = TaskRunner(task, self._executor, self._queue_status)
        self._runners[task.id] = runner
        self._runner_tasks[task.id] = self._group.create_task(self._run_runner(runner), name=f"task {task.id}")

    async def _run_runner(self, runner: TaskRunner) -> None:
        try:
            await runner.run()
        finally:
            self._runners.pop(runner.task_id, None)
            self._runner_tasks.pop(runner.task_id, None)
            self.dependencies.release(runner.task_id)

    def _unassign(self, task_id: str) -> None:
        runner = self._runners.get(task_id)
        if runner is not None:
            runner.unassign()

    def task_ids(self) -> list[str]:
        """The tasks this agent runs (or is stopping) now."""
        return list(self._runners)

    # ---- networks -----------------------------------------------------------------------------
    async def _network_loop(self, networking: TaskNetworking) -> None:
        """Level-triggered: apply the newest views; a failure is logged and retried after a
        growing pause (or sooner, when newer views arrive)."""
        backoff = Backoff(first=0.2, ceiling=MAX_BACKOFF)
        applied = -1
        while True:
            await self._network_work.wait()
            self._network_work.clear()
            received = self._network_received   # what these views include (no await since)
            version = self.network_views.version
            try:
                if version != applied:
                    await networking.sync(self.network_views)
                    applied = version
                self._networks_applied(received)
                if self._retain_due:
                    self._retain_due = False
                    await networking.retain(list(self._runners))
                backoff.reset()
            except Exception:
                log.exception("programming the node's networks failed; will retry")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next_delay()):
                        await self._network_views_changed(version)
                self._network_work.set()   # try again: after the pause, or at once for newer views

    async def _network_views_changed(self, version: int) -> None:
        while self.network_views.version == version:
            self._network_work.clear()
            await self._network_work.wait()

    def _networks_applied(self, received: tuple[str, int]) -> None:
        if received[0] and received != self._network_applied:
            self._network_applied = received
            self._ack_due.set()

    async def _ack_loop(self) -> None:
        """Acknowledge the newest networks message the data path has applied to the session that
        sent it: one call at a time, and only the newest seq (a failed one is not retried; the
        next message is acknowledged, and the manager waits a bounded time anyway)."""
        sent: tuple[str, int] = ("", 0)
        while True:
            await self._ack_due.wait()
            self._ack_due.clear()
            applied, client = self._network_applied, self._client
            if client is None or applied == sent or applied[0] != self._session_id:
                continue   # acknowledged already, or of a session that ended
            try:
                await client.call("dispatcher.networks_applied", {"session_id": applied[0], "seq": applied[1]},
                                  timeout=ACK_TIMEOUT)
                sent = applied
            except RpcError as e:
                log.info("acknowledging applied networks failed", extra={"error": str(e), "seq": applied[1]})

    # ---- status reporting ---------------------------------------------------------------------
    def _queue_status(self, task_id: str, status: TaskStatus) -> None:
        self._pending_status[task_id] = status
        self._status_ready.set()

    async def _report_loop(self) -> None:
        while True:
            await self._status_ready.wait()
            self._status_ready.clear()
            client, session = self._client, self._session_id
            if client is None or not self._pending_status:
                continue
            batch, self._pending_status = self._pending_status, {}
            updates = [{"task_id": tid, "status": st.to_api()} for tid, st in batch.items()]
            try:
                await client.call("dispatcher.update_status", {"session_id": session, "updates": updates})
            except RpcError as e:
                log.info("status report failed; will resend", extra={"error": str(e)})
                for tid, st in batch.items():
                    self._pending_status.setdefault(tid, st)
                await asyncio.sleep(REPORT_INTERVAL)
            else:
                # A lone report goes at once (a task's RUNNING must not wait behind its
                # STARTING: it is when the task enters every load balancer); under a burst,
                # reports are gathered for REPORT_INTERVAL into one store write.
                if len(batch) > 1:
                    await asyncio.sleep(REPORT_INTERVAL)
            if self._pending_status:
                self._status_ready.set()


async def remove_task_containers(executor: TaskExecutor, task_ids: list[str], timeout: float) -> list[str]:
    """Kill and remove the containers of `task_ids` (a node leaving its swarm; Docker force-removes
    a leaving node's task containers), all at once, temporary errors retried, within `timeout`
    seconds. Call once nothing runs these tasks any more (the agent stopped). Returns the task IDs
    whose containers could not be removed (logged)."""
    left: list[str] = []

    async def remove(task_id: str) -> None:
        ctl = executor.existing(task_id)
        failures = 0
        while ctl is not None:
            try:
                await ctl.remove()
                return
            except Exception as e:
                # A temporary error is retried until the bound; another one a few times too (a
                # container killed half way through its creation, as a runner stopped by the
                # leave may leave it, is only seen as stopped a moment later).
                failures += 0 if is_temporary(e) else 1
                if failures >= REMOVE_ATTEMPTS:
                    log.warning("task %s: removing its container: %s", task_id, e)
                    left.append(task_id)
                    return
                await asyncio.sleep(REMOVE_RETRY * 2 ** failures)   # the same step again shortly

    removals = [asyncio.ensure_future(remove(task_id)) for task_id in task_ids]
    if not removals:
        return []
    try:
        _, late = await asyncio.wait(removals, timeout=timeout)
    finally:
        await cancel_and_wait(removals)
    for removal in late:
        left.append(task_ids[removals.index(removal)])
    if left:
        log.error("containers of %d task(s) were not removed: %s", len(left), ", ".join(sorted(left)))
    return left


async def first_failure(*coros: Any) -> None:
    """Run coroutines together until the first one ends; cancel the rest and re-raise its
    exception as is (no ExceptionGroup), so callers can tell errors apart."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(tasks)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
