"""Replicated and global jobs on an in-memory swarm: tasks run to completion, at most
MaxConcurrent at once, until TotalCompletions; failures are retried per the restart policy;
an update starts a new iteration."""

from bench.support.swarm_sim import Harness, make_node
from manager.orchestrator.jobs import JobOrchestrator, task_iteration
from manager.specs import normalize_service_spec
from model import Node, Service, Task, TaskState, new_id

SEC = 1_000_000_000


def job_service(mode: dict, restart: dict | None = None, iteration: int = 0) -> Service:
    tmpl: dict = {"ContainerSpec": {"Image": "busybox:latest", "Args": ["true"]}}
    if restart is not None:
        tmpl["RestartPolicy"] = restart
    spec = normalize_service_spec({"Name": "job", "TaskTemplate": tmpl, "Mode": mode})
    return Service(id=new_id(), spec=spec, job_status={"JobIteration": {"Index": iteration}, "LastExecution": ""})


async def swarm(nodes: int = 2) -> tuple[Harness, list[Node]]:
    h = Harness()
    made = [make_node(f"node{i}") for i in range(nodes)]
    await h.store.update(lambda tx: [tx.create(n) for n in made])
    h.store.view(h.scheduler.load)
    return h, made


def tasks_of(h: Harness, service: Service) -> list[Task]:
    return h.store.view(lambda tx: tx.find("tasks", service_id=service.id))


def states(h: Harness, service: Service) -> list[TaskState]:
    return sorted(t.status.state for t in tasks_of(h, service))


async def test_replicated_job_runs_max_concurrent_at_a_time_until_total_completions() -> None:
    h, _ = await swarm()
    service = job_service({"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}})
    await h.store.update(lambda tx: tx.create(service))
    h.agent.finish = lambda task: None           # tasks keep running until told otherwise
    await h.settle()
    live = [t for t in tasks_of(h, service) if t.status.state == TaskState.RUNNING]
    assert len(live) == 2 and {t.slot for t in live} == {0, 1}
    assert all(t.desired_state == TaskState.COMPLETE and task_iteration(t) == 0 for t in live)
    h.agent.finish = lambda task: 0              # now every running task exits 0
    await h.settle()
    done = [t for t in tasks_of(h, service) if t.status.state == TaskState.COMPLETE]
    assert sorted(t.slot for t in done) == [0, 1, 2, 3, 4]
    assert len(tasks_of(h, service)) == 5, "a completed task is never run again"


async def test_total_completions_defaults_to_max_concurrent_and_max_concurrent_to_one() -> None:
    h, _ = await swarm()
    service = job_service({"ReplicatedJob": {}})
    await h.store.update(lambda tx: tx.create(service))
    h.agent.finish = lambda task: 0
    await h.settle()
    assert states(h, service) == [TaskState.COMPLETE]


async def test_failed_job_task_is_retried_until_max_attempts() -> None:
    h, _ = await swarm()
    service = job_service({"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}},
                          restart={"Condition": "on-failure", "Delay": 0, "MaxAttempts": 2})
    await h.store.update(lambda tx: tx.create(service))
    h.agent.finish = lambda task: 3
    await h.settle()
    assert states(h, service) == [TaskState.FAILED] * 3, "the first run and two retries"


async def test_retry_waits_for_the_restart_delay() -> None:
    h, _ = await swarm()
    service = job_service({"ReplicatedJob": {}}, restart={"Condition": "any", "Delay": 10 * SEC})
    await h.store.update(lambda tx: tx.create(service))
    h.agent.finish = lambda task: 1 if len(tasks_of(h, service)) == 1 else 0
    await h.settle()
    assert states(h, service) == [TaskState.FAILED]
    await h.advance(10)
    await h.settle()
    assert states(h, service) == [TaskState.COMPLETE, TaskState.FAILED]


async def test_condition_none_never_retries() -> None:
    h, _ = await swarm()
    service = job_service({"ReplicatedJob": {"TotalCompletions": 2}}, restart={"Condition": "none"})
    await h.store.update(lambda tx: tx.create(service))
    h.agent.finish = lambda task: 1
    await h.settle()
    assert states(h, service) == [TaskState.FAILED, TaskState.FAILED]


async def test_global_job_runs_once_per_eligible_node_including_nodes_that_join() -> None:
    h, nodes = await swarm(3)
    service = job_service({"GlobalJob": {}})
    await h.store.update(lambda tx: tx.create(service))
    h.agent.finish = lambda task: 0
    await h.settle()
    done = tasks_of(h, service)
    assert sorted(t.node_id for t in done) == sorted(n.id for n in nodes)
    assert all(t.status.state == TaskState.COMPLETE for t in done)
    late = make_node("late")
    await h.store.update(lambda tx: tx.create(late))
    await h.settle()
    assert sorted(t.node_id for t in tasks_of(h, service)) == sorted([*(n.id for n in nodes), late.id])


async def test_an_update_starts_a_new_iteration_and_stops_the_old_one() -> None:
    h, _ = await swarm()
    service = job_service({"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 2}})
    await h.store.update(lambda tx: tx.create(service))
    h.agent.finish = lambda task: None
    await h.settle()

    def next_iteration(tx):
        svc = tx.get("services", service.id).copy()
        svc.job_status = {"JobIteration": {"Index": 1}, "LastExecution": ""}
        tx.update(svc)
    await h.store.update(next_iteration)
    await h.settle()
    old = [t for t in tasks_of(h, service) if task_iteration(t) == 0]
    new = [t for t in tasks_of(h, service) if task_iteration(t) == 1]
    assert [t.status.state for t in old] == [TaskState.SHUTDOWN] * 2
    assert [t.status.state for t in new] == [TaskState.RUNNING] * 2


async def test_replicated_job_task_on_a_down_node_is_run_elsewhere() -> None:
    h, _ = await swarm(2)
    service = job_service({"ReplicatedJob": {}}, restart={"Condition": "on-failure", "MaxAttempts": 1})
    await h.store.update(lambda tx: tx.create(service))
    h.agent.finish = lambda task: None
    await h.settle()
    [first] = tasks_of(h, service)

    def down(tx):
        node = tx.get("nodes", first.node_id).copy()
        node.status = {**node.status, "State": "down"}
        tx.update(node)
    await h.store.update(down)
    await h.settle()
    live = [t for t in tasks_of(h, service)
            if t.status.state == TaskState.RUNNING and t.desired_state == TaskState.COMPLETE]
    assert len(live) == 1 and live[0].node_id != first.node_id, "moved, not counted as an attempt"


async def test_job_orchestrator_leaves_other_modes_alone() -> None:
    from manager.store import Store
    store = Store()
    orch = JobOrchestrator(store)
    service = Service(id=new_id(), spec=normalize_service_spec({"Name": "web", "TaskTemplate": {
        "ContainerSpec": {"Image": "x"}}, "Mode": {"Replicated": {"Replicas": 3}}}))
    await store.update(lambda tx: tx.create(service))
    await orch.reconcile()
    assert store.view(lambda tx: tx.all("tasks")) == []
