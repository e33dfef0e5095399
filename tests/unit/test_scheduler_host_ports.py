"""Host-mode published ports in the scheduler: two tasks of one host port (same protocol) never
share a node, whatever their service; the reason a task cannot be placed is counted per node; the
ports a task was placed with are written with its assignment (Task.endpoint) and the worker reports
them as Status.PortStatus. Driven tick by tick; no sleeps."""

from __future__ import annotations

from collections import Counter
from typing import Any

from manager.scheduler import Scheduler
from manager.scheduler.filters import HostPortFilter
from manager.store import Store, WriteTx
from model import Service, Task, TaskState, TaskStatus, new_id
from tests.unit.test_scheduler import node, placed
from worker.exec import port_status


def service(name: str, *ports: dict[str, Any]) -> Service:
    spec: dict[str, Any] = {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
                            "Mode": {"Replicated": {"Replicas": 1}}}
    if ports:
        spec["EndpointSpec"] = {"Mode": "vip", "Ports": list(ports)}
    return Service(id=new_id(), spec=spec)


def host_port(published: int, target: int = 80, protocol: str = "tcp") -> dict[str, Any]:
    return {"Protocol": protocol, "TargetPort": target, "PublishedPort": published, "PublishMode": "host"}


def task(svc: Service, slot: int, node_id: str = "") -> Task:
    return Task(id=new_id(), service_id=svc.id, service_name=svc.name, slot=slot, node_id=node_id,
                spec=svc.spec["TaskTemplate"], status=TaskStatus(TaskState.PENDING, "", "pending task scheduling"))


async def setup(*objs: Any) -> tuple[Store, Scheduler]:
    store = Store()
    await store.update(lambda tx: [tx.create(o) for o in objs])
    sched = Scheduler(store)
    store.view(sched.load)
    return store, sched


async def test_tasks_of_one_host_port_go_to_different_nodes_and_the_rest_wait_saying_why() -> None:
    nodes = [node(f"n{i}") for i in range(3)]
    web = service("web", host_port(8080), {"Protocol": "tcp", "TargetPort": 443, "PublishedPort": 30000,
                                          "PublishMode": "ingress"})
    tasks = [task(web, i) for i in range(1, 5)]
    store, sched = await setup(*nodes, web, *tasks)
    assert await sched.tick() == 3
    got = placed(store)
    on = Counter(got[t.id].node_id for t in tasks if got[t.id].node_id)
    assert sorted(on.values()) == [1, 1, 1]
    assigned = [got[t.id] for t in tasks if got[t.id].node_id]
    assert all(t.endpoint == {"Ports": [host_port(8080)]} for t in assigned)   # placed with its ports
    left = next(got[t.id] for t in tasks if not got[t.id].node_id)
    assert left.status.state is TaskState.PENDING and left.endpoint is None
    assert left.status.err == "no suitable node (host-mode port already in use on 3 nodes)"
    # another service on the same host port is kept off those nodes too; another protocol is not
    api = service("api", host_port(8080))
    dns = service("dns", host_port(8080, 53, "udp"))
    more = [task(api, 1), task(dns, 1), task(dns, 2), task(dns, 3)]
    await store.update(lambda tx: [tx.create(o) for o in (api, dns, *more)])
    store.view(sched.load)
    assert await sched.tick() == 3
    got = placed(store)
    assert got[more[0].id].status.err == "no suitable node (host-mode port already in use on 3 nodes)"
    assert sorted(Counter(got[t.id].node_id for t in more[1:]).values()) == [1, 1, 1]
    # a fourth node, or a task that stops, makes room
    await store.update(lambda tx: tx.create(node("n3")))
    store.view(sched.load)
    assert await sched.tick() == 1     # the first pending task of the two fits there; the other waits
    still = [t for t in (left, more[0]) if not placed(store)[t.id].node_id]
    assert len(still) == 1
    stopped = placed(store)[assigned[0].id].copy()
    stopped.status.advance(TaskState.FAILED, "", "task failed")
    await store.update(lambda tx: tx.update(stopped))
    store.view(sched.load)
    assert await sched.tick() == 1
    assert placed(store)[still[0].id].node_id == stopped.node_id


async def test_explanations_combine_with_the_other_filters() -> None:
    drained = node("drained", availability="drain")
    busy, free = node("busy"), node("free", memory=1)
    web = service("web", host_port(8080))
    first = task(web, 1, node_id="")
    store, sched = await setup(drained, busy, web, first)
    assert await sched.tick() == 1 and placed(store)[first.id].node_id == busy.id
    await store.update(lambda tx: tx.create(free))
    second = task(web, 2)
    second.spec = {**second.spec, "Resources": {"Reservations": {"MemoryBytes": 1 << 20}}}
    await store.update(lambda tx: tx.create(second))
    store.view(sched.load)
    assert await sched.tick() == 0
    assert placed(store)[second.id].status.err == ("no suitable node (1 node not available for new tasks; "
                                                   "1 node insufficient memory; "
                                                   "host-mode port already in use on 1 node)")
    assert HostPortFilter().explain(2) == "host-mode port already in use on 2 nodes"


async def test_a_global_task_is_checked_on_its_own_node() -> None:
    n = node("n")
    one, two = service("one", host_port(9000)), service("two", host_port(9000))
    t1, t2 = task(one, 0, node_id=n.id), task(two, 0, node_id=n.id)
    store, sched = await setup(n, one, two, t1, t2)
    assert await sched.tick() == 1
    got = placed(store)
    waiting = got[t2.id] if got[t1.id].status.state is TaskState.ASSIGNED else got[t1.id]
    assert waiting.status.err == "no suitable node (host-mode port already in use on 1 node)"


async def test_a_service_whose_host_ports_changed_under_a_decision_gives_way() -> None:
    n = node("n")
    web = service("web", host_port(8080))
    t = task(web, 1)
    store, sched = await setup(n, web, t)
    decisions = sched.decide()
    assert [d.node_id for d in decisions] == [n.id]

    def change(tx: WriteTx) -> None:
        current = tx.get("services", web.id).copy()
        current.spec["EndpointSpec"]["Ports"] = [host_port(9090)]
        tx.update(current)
    await store.update(change)
    result = await store.batch(lambda batch: batch.update(lambda tx: sched._write(tx, decisions[0], "now")))
    assert isinstance(result.errors[0], LookupError) and placed(store)[t.id].node_id == ""
    # the next round sees the new ports
    _, sub = store.view_and_watch(sched.load, tables=("nodes", "tasks", "services"))
    sub.close()
    assert await sched.tick() == 1
    assert placed(store)[t.id].endpoint == {"Ports": [host_port(9090)]}


def test_the_worker_reports_the_host_ports_as_port_status() -> None:
    t = Task(id=new_id(), endpoint={"Ports": [host_port(8080), {"Protocol": "udp", "TargetPort": 53,
                                                                 "PublishMode": "host"}]})
    assert port_status(t) == {"Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"},
        {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 0, "PublishMode": "host"}]}
    assert port_status(Task(id=new_id())) is None
    assert Task(id=new_id()).to_api()["Status"]["PortStatus"] == {}
