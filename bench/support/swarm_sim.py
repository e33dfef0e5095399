"""An in-memory swarm for tests and simulations: the control loops plus fake agents.

`FakeAgent` plays the workers' part: it moves assigned tasks through accepted, preparing,
ready, starting to running (or fails them, per a rule) and shuts down tasks whose desired
state is past running. The leader's own loops are the real ones: orchestrators, the network
allocator (NEW -> PENDING, with addresses on the task's networks), the scheduler (PENDING ->
ASSIGNED) and the reaper. `Harness.settle()` runs rounds of them all until nothing changes,
so tests drive a whole service lifecycle with no sleeps and virtual time.
"""

from __future__ import annotations

from collections.abc import Callable

from manager.allocator import Allocator
from manager.orchestrator.clock import ManualClock
from manager.orchestrator.global_orchestrator import GlobalOrchestrator
from manager.orchestrator.jobs import JobOrchestrator
from manager.orchestrator.reaper import TaskReaper
from manager.orchestrator.replicated import ReplicatedOrchestrator
from manager.orchestrator.restart import RestartSupervisor
from manager.orchestrator.updater import UpdateSupervisor
from manager.scheduler import Scheduler
from manager.store import Store, WriteTx
from model import Node, Task, TaskState, format_time, new_id

GB = 1 << 30
AGENT_STEPS = (TaskState.ACCEPTED, TaskState.PREPARING, TaskState.READY, TaskState.STARTING, TaskState.RUNNING)


def make_node(name: str, *, state: str = "ready", availability: str = "active", role: str = "worker",
              labels: dict | None = None, cpus: int = 4, memory: int = 8 * GB) -> Node:
    return Node(id=new_id(), spec={"Role": role, "Availability": availability, "Labels": labels or {}},
                description={"Hostname": name, "Platform": {"OS": "linux", "Architecture": "x86_64"},
                             "Resources": {"NanoCPUs": cpus * 10**9, "MemoryBytes": memory},
                             "Engine": {"EngineVersion": "shoal", "Labels": {}}},
                status={"State": state, "Message": "", "Addr": "127.0.0.1"})


class FakeAgent:
    """Acts for every node that is not down. `fail(task) -> str` returns an error to fail a
    task with when it would start ("" = it runs); `exit_code(task)` ends running tasks."""

    def __init__(self, store: Store, clock: ManualClock) -> None:
        self.store = store
        self.clock = clock
        self.fail: Callable[[Task], str] = lambda task: ""
        self.finish: Callable[[Task], int | None] = lambda task: None  # exit code to end a running task
        self.started: list[str] = []  # task IDs in the order they reached running
        self.stopped: list[str] = []  # task IDs in the order they were shut down
        self.log: list[tuple[str, str]] = []  # ("start" | "stop", task ID), in order

    def _node_up(self, tx: WriteTx, node_id: str) -> bool:
        node = tx.get("nodes", node_id)
        return node is not None and node.state != "down"

    async def step(self) -> int:
        """One round of status reports; returns how many tasks changed."""
        now = format_time(self.clock.now())

        def act(tx: WriteTx) -> int:
            changed = 0
            for task in tx.all("tasks"):
                new = self._next(tx, task, now)
                if new is not None:
                    tx.update(new)
                    changed += 1
            return changed

        return await self.store.update(act)

    def _next(self, tx: WriteTx, task: Task, now: str) -> Task | None:
        state = task.status.state
        if state < TaskState.ASSIGNED or state > TaskState.RUNNING or not self._node_up(tx, task.node_id):
            return None
        moved = task.copy()
        if task.desired_state >= TaskState.SHUTDOWN:     # a job's task runs to COMPLETE
            moved.status.advance(TaskState.SHUTDOWN, now, "shutdown")
            self.stopped.append(task.id)
            self.log.append(("stop", task.id))
            return moved
        if state == TaskState.RUNNING:
            code = self.finish(task)
            if code is None:
                return None
            if code == 0:
                moved.status.advance(TaskState.COMPLETE, now, "finished")
            else:
                moved.status.advance(TaskState.FAILED, now, "started", err=f"task: non-zero exit ({code})")
            return moved
        target = AGENT_STEPS[AGENT_STEPS.index(state) + 1] if state in AGENT_STEPS else TaskState.ACCEPTED
        if target > TaskState.READY and task.desired_state < TaskState.RUNNING:
            target = TaskState.READY  # prepared, waiting to be told to start
            if state == TaskState.READY:
                return None
        if target == TaskState.STARTING:
            err = self.fail(task)
            if err:
                moved.status.advance(TaskState.FAILED if state >= TaskState.PREPARING else TaskState.REJECTED,
                                     now, "starting", err=err)
                return moved
        moved.status.advance(target, now, "started" if target == TaskState.RUNNING else target.api)
        if target == TaskState.RUNNING:
            self.started.append(task.id)
            self.log.append(("start", task.id))
        return moved


class Harness:
    def __init__(self, store: Store | None = None, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self.store = store or Store(clock=self.clock.now)
        self.restarts = RestartSupervisor()
        self.updates = UpdateSupervisor()
        self.replicated = ReplicatedOrchestrator(self.store, self.clock, self.restarts, self.updates)
        self.global_ = GlobalOrchestrator(self.store, self.clock, self.restarts, self.updates)
        self.jobs = JobOrchestrator(self.store, self.clock)
        self.reaper = TaskReaper(self.store, self.clock)
        self.allocator = Allocator(self.store, clock=self.clock.now)
        self.scheduler = Scheduler(self.store, clock=self.clock.now)
        self.agent = FakeAgent(self.store, self.clock)
        self._sub = self.store.watch(tables=("nodes", "tasks"), limit=10**7)
        self._allocator_sub = self.store.watch(tables=Allocator.TABLES, limit=10**7)
        self.store.view(self.scheduler.load)
        self.store.view(self.allocator.load)

    async def round(self, agent: bool = True) -> int:
        """One pass of every loop; returns the number of store writes it caused."""
        before = self.store.index
        await self.replicated.reconcile()
        await self.global_.reconcile()
        await self.jobs.reconcile()
        await self.allocate()
        for event in self._sub.drain():
            self.scheduler.handle(event)
        await self.scheduler.tick()
        if agent:
            await self.agent.step()
        await self.reaper.reconcile()
        for event in self._sub.drain():
            self.scheduler.handle(event)
        return self.store.index - before

    async def allocate(self) -> None:
        """One allocator round over the events since the last one."""
        for event in self._allocator_sub.drain():
            self.allocator.handle(event)
        await self.allocator.tick()
        for event in self._allocator_sub.drain():
            self.allocator.handle(event)

    async def settle(self, max_rounds: int = 50, agent: bool = True) -> int:
        """Run rounds until a round changes nothing. Returns the rounds taken."""
        for rounds in range(1, max_rounds + 1):
            if await self.round(agent) == 0:
                return rounds
        raise AssertionError(f"no steady state after {max_rounds} rounds")

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds)
