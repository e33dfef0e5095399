"""No restart storm: tasks rejected while preparing (an image that cannot be pulled) are replaced
no faster than the restart policy's delay, and the same rejection over and over backs off
further (the curve in manager/orchestrator/restart.py). On the in-memory swarm, virtual time."""

from __future__ import annotations

import asyncio
import itertools

from bench.support.swarm_sim import FakeAgent, Harness, make_node
from manager.orchestrator import ManualClock, ReplicatedOrchestrator
from manager.orchestrator.restart import rejection_delay
from manager.specs import normalize_service_spec
from manager.store import Store, WriteTx
from model import Service, Task, TaskState, new_id
from tests.support.wait import async_wait_until

SEC = 1_000_000_000
MISSING = "nosuchimage:4"


class RejectingAgent(FakeAgent):
    """Rejects, while preparing, every task whose image is in `missing`, as a failed pull does,
    whatever its desired state: a task waiting out its restart delay is prepared too."""

    def __init__(self, store: Store, clock: ManualClock) -> None:
        super().__init__(store, clock)
        self.missing: dict[str, str] = {MISSING: f"No such image: {MISSING}"}   # image -> error

    def _next(self, tx: WriteTx, task: Task, now: str) -> Task | None:
        error = self.missing.get(task.spec["ContainerSpec"]["Image"])
        if error and task.status.state == TaskState.PREPARING and task.desired_state < TaskState.SHUTDOWN:
            rejected = task.copy()
            rejected.status.advance(TaskState.REJECTED, now, "preparing failed", err=error)
            return rejected
        return super()._next(tx, task, now)


def service(image: str = MISSING, *, mode: dict | None = None, restart: dict | None = None) -> Service:
    template: dict = {"ContainerSpec": {"Image": image, "Args": ["sleep", "1000"]}}
    if restart is not None:
        template["RestartPolicy"] = restart
    spec = normalize_service_spec({"Name": "typo", "TaskTemplate": template,
                                   "Mode": mode or {"Replicated": {"Replicas": 1}}})
    return Service(id=new_id(), spec=spec)


async def swarm(svc: Service, nodes: int = 1) -> Harness:
    h = Harness()
    h.agent = RejectingAgent(h.store, h.clock)
    await h.store.update(lambda tx: [tx.create(make_node(f"node{i}")) for i in range(nodes)])
    h.store.view(h.scheduler.load)
    await h.store.update(lambda tx: tx.create(svc))
    return h


class Creations:
    """When each task of a service first appeared (virtual seconds since the watch began); the
    reaper deletes old tasks, so they are noted as they come."""

    def __init__(self, h: Harness, svc: Service) -> None:
        self.h, self.svc = h, svc
        self.start = h.clock.now()
        self.seen: dict[str, float] = {}

    def note(self) -> None:
        for task in self.h.store.view(lambda tx: tx.find("tasks", service_id=self.svc.id)):
            self.seen.setdefault(task.id, self.h.clock.now() - self.start)

    async def run_for(self, seconds: float, step: float = 1.0) -> None:
        await self.h.settle()
        self.note()
        for _ in range(round(seconds / step)):
            await self.h.advance(step)
            await self.h.settle()
            self.note()

    def times(self) -> list[float]:
        return sorted(self.seen.values())

    def gaps(self) -> list[float]:
        times = self.times()
        return [round(b - a, 6) for a, b in itertools.pairwise(times)]


def test_the_rejection_backoff_curve() -> None:
    assert [rejection_delay(5.0, n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert [rejection_delay(0.0, n) for n in range(1, 6)] == [0, 2, 4, 8, 16]
    assert rejection_delay(600.0, 3) == 600.0     # a policy delay over the ceiling is kept


async def test_a_missing_image_is_retried_after_the_delay_then_less_and_less_often() -> None:
    svc = service()     # Docker's default restart policy: any, 5 s
    h = await swarm(svc)
    creations = Creations(h, svc)
    await creations.run_for(700)
    # The first task is rejected and replaced at once by one that waits out the 5 s delay; that
    # one is rejected too (it is prepared while it waits) and replaced only once its delay is
    # over; then each identical rejection doubles the wait, up to 5 minutes.
    assert creations.gaps() == [0, 5, 10, 20, 40, 80, 160, 300]
    tasks = h.store.view(lambda tx: tx.find("tasks", service_id=svc.id))
    assert sum(t.desired_state <= TaskState.RUNNING for t in tasks) == 1, "one runnable task in the slot"
    assert all(t.status.state == TaskState.REJECTED for t in tasks)


async def test_the_count_starts_again_with_another_error_and_after_a_task_ran() -> None:
    svc = service()
    h = await swarm(svc)
    agent = h.agent
    assert isinstance(agent, RejectingAgent)
    creations = Creations(h, svc)
    await creations.run_for(16)
    assert creations.times() == [0, 0, 5, 15]    # the 4th task, rejected at 15, waits until 35
    agent.missing[MISSING] = "pull access denied"
    await creations.run_for(75)
    # The 4th rejection (still the old error) holds its slot 40 s; the 5th task, rejected with
    # the new error, counts from 1 again: the policy's 5 s, then 10 s.
    assert creations.times()[4:] == [35, 75, 80, 90]
    del agent.missing[MISSING]      # the image appears; the 8th task, rejected at 90, holds 20 s
    await creations.run_for(60)
    running = [t for t in h.store.view(lambda tx: tx.find("tasks", service_id=svc.id))
               if t.status.state == TaskState.RUNNING]
    assert len(running) == 1 and creations.times()[8] == 110      # the 9th waited 40 s, then ran
    agent.missing[MISSING] = f"No such image: {MISSING}"
    agent.finish = lambda task: 1 if task.id == running[0].id else None   # it fails; the next is rejected
    await creations.run_for(20)
    # A task that ran and failed ends the run of rejections: 5 s, then 5 s and 10 s again.
    assert creations.times()[9:] == [151, 156, 161, 171]


async def test_a_zero_delay_does_not_storm_either() -> None:
    svc = service(restart={"Condition": "any", "Delay": 0})
    h = await swarm(svc)
    creations = Creations(h, svc)
    await creations.run_for(30)
    assert creations.gaps() == [0, 0, 2, 4, 8, 16]


async def test_a_global_service_with_a_missing_image_backs_off_on_every_node() -> None:
    svc = service(mode={"Global": {}})
    h = await swarm(svc, nodes=2)
    creations = Creations(h, svc)
    await creations.run_for(40)
    per_node = len(creations.seen) / 2
    assert per_node == 5, creations.times()              # at 0, 0, 5, 15, 35 on each node


async def test_a_job_with_a_missing_image_backs_off() -> None:
    svc = service(mode={"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}})
    svc.job_status = {"JobIteration": {"Index": 0}, "LastExecution": ""}
    h = await swarm(svc)
    creations = Creations(h, svc)
    await creations.run_for(80)
    assert creations.gaps() == [5, 10, 20, 40]


async def test_the_run_loop_wakes_for_a_held_back_restart() -> None:
    """The real loop (not the harness's rounds) comes back when the delay of a task that was
    rejected while waiting it out is over, with no event to wake it."""
    svc = service()
    clock = ManualClock()
    store = Store(clock=clock.now)
    h = Harness(store, clock)
    h.agent = RejectingAgent(store, clock)
    await store.update(lambda tx: tx.create(make_node("n1")))
    h.store.view(h.scheduler.load)
    await store.update(lambda tx: tx.create(svc))
    await h.settle()                                    # T1 rejected, T2 made and rejected too
    orch = ReplicatedOrchestrator(store, clock, h.restarts, h.updates)

    def ids() -> set[str]:
        return {t.id for t in store.view(lambda tx: tx.find("tasks", service_id=svc.id))}

    before = ids()
    assert len(before) == 2
    start = clock.now()
    async with asyncio.TaskGroup() as tg:
        loop = tg.create_task(orch.run())

        async def wake_set() -> bool:
            return svc.id in orch.wakes

        await async_wait_until(wake_set, timeout=5, what="the loop's first round")
        assert orch.wakes[svc.id] == start + 5
        # Virtual time in 1 s steps (the loop may take a step to go to sleep): nothing new until
        # the delay is over, then the replacement, with no store event to wake the loop.
        async with asyncio.timeout(5):
            while ids() == before and clock.now() - start < 10:
                await clock.advance(1)
                for _ in range(10):       # let the woken loop run its round
                    await asyncio.sleep(0)
        loop.cancel()
    assert len(ids() - before) == 1
    assert 5 <= clock.now() - start <= 6
