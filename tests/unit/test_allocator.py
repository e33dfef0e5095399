"""The network allocator on the in-memory store: networks, task and node addresses, exhaustion,
release rules and a leader change. Rounds are driven by hand (events, then one tick); no sleeps."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aio import cancel_and_wait
from bench.support.swarm_sim import Harness, make_node
from manager.allocator import Allocator, ingress_network
from manager.store import Store, WriteTx
from model import Cluster, Network, Node, Service, Task, TaskState, TaskStatus, new_id

VXLAN = "com.docker.network.driver.overlay.vxlanid_list"


def new_store() -> Store:
    ticks = itertools.count(1_700_000_000)
    return Store(clock=lambda: float(next(ticks)))  # every write a later time: creation order is clear


class Rig:
    """One allocator on a store, fed its events by hand."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.allocator = Allocator(store, clock=lambda: 1_800_000_000.0)
        _, self.sub = store.view_and_watch(self.allocator.load, tables=Allocator.TABLES)

    async def round(self) -> None:
        for event in self.sub.drain():
            self.allocator.handle(event)
        await self.allocator.tick()
        for event in self.sub.drain():
            self.allocator.handle(event)

    async def settle(self) -> None:
        for _ in range(20):
            before = self.store.index
            await self.round()
            if self.store.index == before:
                return
        raise AssertionError("allocator did not settle")

    def close(self) -> None:
        self.sub.close()


async def put(store: Store, *objs: Any) -> None:
    def create(tx: WriteTx) -> None:
        for obj in objs:
            tx.create(obj)
    await store.update(create)


def network(name: str, **spec: Any) -> Network:
    return Network(id=new_id(), spec={"Name": name, "Driver": "overlay", "Scope": "swarm", "Labels": {}, **spec})


def service(name: str, networks: list[str] = (), ports: list[dict] | None = None,  # type: ignore[assignment]
            mode: str = "vip") -> Service:
    """A service on `networks`; dnsrr mode for tests about task addresses alone (no VIP)."""
    spec: dict[str, Any] = {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "busybox"},
                                                           "Networks": [{"Target": n} for n in networks]},
                            "Mode": {"Replicated": {"Replicas": 1}}}
    if ports is not None or mode != "vip":
        spec["EndpointSpec"] = {"Mode": mode, "Ports": ports or []}
    return Service(id=new_id(), spec=spec)


def vips(store: Store, svc: Service) -> list[tuple[str, str]]:
    """(network name, VIP) of a service, in order."""
    got = get(store, "services", svc.id)
    names = {n.id: n.name for n in store.view(lambda tx: tx.all("networks"))}
    return [(names[v["NetworkID"]], v["Addr"]) for v in got.endpoint.get("VirtualIPs") or []]


_made = itertools.count(1)


def task(svc: Service, slot: int, state: TaskState = TaskState.NEW, node_id: str = "") -> Task:
    """A task made after every earlier one (tasks get addresses in the order they were made)."""
    return Task(id=new_id(), spec=svc.spec["TaskTemplate"], service_id=svc.id, slot=slot, node_id=node_id,
                service_name=svc.name, status=TaskStatus(state, "2026-01-01T00:00:00Z", "created"),
                created_at=f"2026-01-01T00:00:00.{next(_made):09d}Z")


def get(store: Store, table: str, obj_id: str) -> Any:
    return store.view(lambda tx: tx.get(table, obj_id))


def addresses(t: Task) -> list[str]:
    return [a for att in t.networks_attachments for a in att["Addresses"]]


async def set_status(store: Store, task_id: str, state: TaskState, node_id: str | None = None,
                     desired: TaskState | None = None) -> None:
    def write(tx: WriteTx) -> None:
        t = tx.get("tasks", task_id).copy()
        if node_id is not None:
            t.node_id = node_id
        if state != t.status.state:
            t.status.advance(state, "2026-01-01T00:00:01Z", state.api)
        if desired is not None:
            t.set_desired_state(desired)
        tx.update(t)
    await store.update(write)


async def test_ingress_then_overlays_get_serial_subnets_and_vxlan_ids() -> None:
    store = new_store()
    await put(store, Cluster(id="c", spec={"Name": "default"}))
    ingress = ingress_network()
    await put(store, ingress)
    a, b = network("a"), network("b", Options={"com.docker.network.driver.mtu": "1400"})
    await put(store, a)
    await put(store, b)
    rig = Rig(store)
    await rig.settle()
    got = {n.name: n for n in store.view(lambda tx: tx.all("networks"))}
    assert got["ingress"].ipam == {"Driver": {"Name": "default"},
                                   "Configs": [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]}
    assert got["ingress"].driver_state == {"Name": "overlay", "Options": {VXLAN: "4096"}}
    api = got["a"].to_api()
    assert api["IPAM"] == {"Driver": "default", "Options": None,
                           "Config": [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]}
    assert api["Options"] == {VXLAN: "4097"} and api["Driver"] == "overlay"
    assert got["b"].to_api()["Options"] == {"com.docker.network.driver.mtu": "1400", VXLAN: "4098"}
    assert got["b"].to_api()["IPAM"]["Config"] == [{"Subnet": "10.0.2.0/24", "Gateway": "10.0.2.1"}]
    # a network created later, after one in the middle was removed: first free subnet, next id
    await store.update(lambda tx: tx.delete("networks", got["a"].id))
    c = network("c")
    await put(store, c)
    await rig.settle()
    allocated = get(store, "networks", c.id)
    assert allocated.ipam["Configs"][0]["Subnet"] == "10.0.1.0/24"
    assert allocated.driver_state["Options"][VXLAN] == "4099"


async def test_cluster_pools_and_subnet_size() -> None:
    store = new_store()
    await put(store, Cluster(id="c", spec={"Name": "default"}, default_addr_pool=["10.20.0.0/16", "10.30.0.0/26"],
                             subnet_size=26))
    nets = [ingress_network(), network("a"), network("b")]
    for n in nets:
        await put(store, n)
    await Rig(store).settle()
    subnets = [get(store, "networks", n.id).ipam["Configs"][0]["Subnet"] for n in nets]
    assert subnets == ["10.20.0.0/26", "10.20.0.64/26", "10.20.0.128/26"]


async def test_pinned_subnet_range_gateway_and_vxlan_id() -> None:
    store = new_store()
    pinned = network("pinned", Options={VXLAN: "5000"}, IPAM={"Driver": "default", "Config": [
        {"Subnet": "10.0.0.0/24", "IPRange": "10.0.0.128/25", "Gateway": "10.0.0.254"}]})
    auto = network("auto")
    await put(store, pinned)
    await put(store, auto)
    svc = service("web", ["pinned"])  # a name in a task spec is resolved too
    tasks = [task(svc, i) for i in (1, 2)]
    await put(store, svc, *tasks)
    await Rig(store).settle()
    got = get(store, "networks", pinned.id)
    assert got.ipam["Configs"] == [{"Subnet": "10.0.0.0/24", "Range": "10.0.0.128/25", "Gateway": "10.0.0.254"}]
    assert got.to_api()["IPAM"]["Config"] == [{"Subnet": "10.0.0.0/24", "IPRange": "10.0.0.128/25",
                                               "Gateway": "10.0.0.254"}]
    assert got.driver_state["Options"] == {VXLAN: "5000"}
    other = get(store, "networks", auto.id)
    assert other.ipam["Configs"][0]["Subnet"] == "10.0.1.0/24"  # the pinned subnet is taken
    assert other.driver_state["Options"] == {VXLAN: "4096"}  # pinned ids do not move the serial cursor
    assert vips(store, svc) == [("pinned", "10.0.0.128/24")]  # the service's VIP comes first
    assert [addresses(get(store, "tasks", t.id)) for t in tasks] == [["10.0.0.129/24"], ["10.0.0.130/24"]]


async def test_vxlan_and_subnet_conflicts_leave_the_network_unallocated_and_say_why() -> None:
    store = new_store()
    first = network("first")
    await put(store, first)
    rig = Rig(store)
    await rig.settle()
    clash = network("clash", Options={VXLAN: "4096"})
    overlap = network("overlap", IPAM={"Config": [{"Subnet": "10.0.0.0/23"}]})
    await put(store, clash)
    await put(store, overlap)
    svc = service("web", [clash.id])
    t = task(svc, 1)
    await put(store, svc, t)
    await rig.settle()
    assert not get(store, "networks", clash.id).allocated
    assert rig.allocator.network_errors[clash.id] == \
        "could not assign vxlan id 4096 to pool 10.0.2.0/24: requested bit is already allocated"
    assert rig.allocator.network_errors[overlap.id] == \
        "Pool overlaps with other one on this address space: 10.0.0.0/23 overlaps 10.0.0.0/24 of network first"
    waiting = get(store, "tasks", t.id)
    assert waiting.status.state is TaskState.NEW
    assert waiting.status.err == ('network "clash" is not allocated yet: could not assign vxlan id 4096 to pool '
                                  "10.0.2.0/24: requested bit is already allocated")
    # the network in the way goes: both others can be allocated now, and the task moves on
    await store.update(lambda tx: tx.delete("networks", first.id))
    await rig.settle()
    assert get(store, "networks", clash.id).allocated and get(store, "networks", overlap.id).allocated
    assert get(store, "tasks", t.id).status.state is TaskState.PENDING


async def test_task_gets_ingress_first_then_its_networks_and_moves_to_pending() -> None:
    store = new_store()
    ingress, back, front = ingress_network(), network("back"), network("front")
    for n in (ingress, back, front):
        await put(store, n)
    web = service("web", [front.id, back.id], ports=[{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                                                      "PublishMode": "ingress"}])
    plain = service("plain")
    tasks = [task(web, 1), task(web, 2)]
    lone = task(plain, 1)
    await put(store, web, plain, *tasks, lone)
    await Rig(store).settle()
    first = get(store, "tasks", tasks[0].id)
    assert first.status.state is TaskState.PENDING and first.status.message == "pending task scheduling"
    assert [att["Network"]["Spec"]["Name"] for att in first.networks_attachments] == ["ingress", "front", "back"]
    assert vips(store, web) == [("ingress", "10.0.0.2/24"), ("front", "10.0.2.2/24"), ("back", "10.0.1.2/24")]
    assert addresses(first) == ["10.0.0.3/24", "10.0.2.3/24", "10.0.1.3/24"]
    assert addresses(get(store, "tasks", tasks[1].id)) == ["10.0.0.4/24", "10.0.2.4/24", "10.0.1.4/24"]
    view = first.networks_attachments[1]["Network"]
    assert view["ID"] == front.id and view["Spec"]["Scope"] == "swarm"
    assert view["DriverState"] == {"Name": "overlay", "Options": {VXLAN: "4098"}}
    assert view["IPAMOptions"] == {"Driver": {"Name": "default"},
                                   "Configs": [{"Subnet": "10.0.2.0/24", "Gateway": "10.0.2.1"}]}
    assert first.to_api()["NetworksAttachments"] == first.networks_attachments
    done = get(store, "tasks", lone.id)
    assert done.status.state is TaskState.PENDING and done.networks_attachments == []


async def test_exhausted_network_names_itself_and_retries_when_an_address_is_freed() -> None:
    store = new_store()
    tiny = network("tiny", IPAM={"Config": [{"Subnet": "10.9.0.0/29"}]})  # .2-.6: five addresses
    await put(store, tiny)
    svc = service("web", [tiny.id], mode="dnsrr")
    tasks = [task(svc, i) for i in range(1, 7)]
    await put(store, svc, *tasks)
    rig = Rig(store)
    await rig.settle()
    states = [get(store, "tasks", t.id) for t in tasks]
    assert [addresses(t) for t in states[:5]] == [[f"10.9.0.{i}/29"] for i in range(2, 7)]
    last = states[5]
    assert last.status.state is TaskState.NEW and last.status.message == "created"
    assert last.status.err == 'no IP address left on network "tiny" (10.9.0.0/29)'
    assert last.to_api()["Status"]["Err"] == 'no IP address left on network "tiny" (10.9.0.0/29)'
    # a running task told to shut down still holds its address until it is seen stopped
    await set_status(store, tasks[0].id, TaskState.RUNNING, node_id="n1")
    await set_status(store, tasks[0].id, TaskState.RUNNING, desired=TaskState.SHUTDOWN)
    await rig.settle()
    assert get(store, "tasks", tasks[5].id).status.state is TaskState.NEW
    await set_status(store, tasks[0].id, TaskState.SHUTDOWN)
    await rig.settle()
    moved = get(store, "tasks", tasks[5].id)
    assert moved.status.state is TaskState.PENDING and moved.status.err == ""
    assert addresses(moved) == ["10.9.0.2/29"]  # the freed one: the only one left


async def test_addresses_are_not_reused_at_once_and_deleted_tasks_free_theirs() -> None:
    store = new_store()
    net = network("net")
    await put(store, net)
    svc = service("web", [net.id], mode="dnsrr")
    first = [task(svc, i) for i in (1, 2, 3)]
    await put(store, svc, *first)
    rig = Rig(store)
    await rig.settle()
    assert [addresses(get(store, "tasks", t.id)) for t in first] == [["10.0.0.2/24"], ["10.0.0.3/24"],
                                                                      ["10.0.0.4/24"]]
    await store.update(lambda tx: tx.delete("tasks", first[0].id))
    await set_status(store, first[1].id, TaskState.FAILED)
    later = task(svc, 4)
    await put(store, later)
    await rig.settle()
    assert addresses(get(store, "tasks", later.id)) == ["10.0.0.5/24"]
    assert rig.allocator.book.used_on(net.id) == {int.from_bytes(bytes([10, 0, 0, 4])): 1,
                                                  int.from_bytes(bytes([10, 0, 0, 5])): 1}
    assert get(store, "networks", net.id).address_cursor == {"10.0.0.0/24": "10.0.0.5"}


async def test_a_never_placed_task_that_is_shut_down_frees_its_address() -> None:
    store = new_store()
    tiny = network("tiny", IPAM={"Config": [{"Subnet": "10.9.0.0/30"}]})  # one address: .2
    await put(store, tiny)
    svc = service("web", [tiny.id], mode="dnsrr")
    old, new = task(svc, 1), task(svc, 1)
    await put(store, svc, old)
    rig = Rig(store)
    await rig.settle()
    await put(store, new)
    await rig.settle()
    assert get(store, "tasks", new.id).status.err == 'no IP address left on network "tiny" (10.9.0.0/30)'
    await set_status(store, old.id, TaskState.PENDING, desired=TaskState.SHUTDOWN)  # never assigned: it can't run
    await rig.settle()
    assert addresses(get(store, "tasks", new.id)) == ["10.9.0.2/30"]


async def test_nodes_get_ingress_and_the_networks_of_their_live_tasks() -> None:
    store = new_store()
    ingress, net = ingress_network(), network("net")
    await put(store, ingress)
    await put(store, net)
    n1, n2 = make_node("n1"), make_node("n2")
    svc = service("web", [net.id])
    t = task(svc, 1)
    await put(store, n1, n2, svc, t)
    rig = Rig(store)
    await rig.settle()

    def attachments(node: Node) -> list[tuple[str, str]]:
        got = get(store, "nodes", node.id)
        return [(a["Network"]["Spec"]["Name"], a["Addresses"][0]) for a in got.attachments]

    assert sorted(attachments(n1) + attachments(n2)) == [("ingress", "10.0.0.2/24"), ("ingress", "10.0.0.3/24")]
    await set_status(store, t.id, TaskState.ASSIGNED, node_id=n1.id)
    await rig.settle()
    assert [name for name, _ in attachments(n1)] == ["ingress", "net"]
    assert attachments(n1)[1][1] == "10.0.1.4/24"  # the service's VIP has .2, the task .3
    assert [name for name, _ in attachments(n2)] == ["ingress"]
    await set_status(store, t.id, TaskState.RUNNING)
    await rig.settle()
    assert [name for name, _ in attachments(n1)] == ["ingress", "net"]
    await set_status(store, t.id, TaskState.COMPLETE)
    await rig.settle()
    assert [name for name, _ in attachments(n1)] == ["ingress"]
    assert rig.allocator.book.used_on(net.id) == {int.from_bytes(bytes([10, 0, 1, 2])): 1}  # the VIP
    late = make_node("n3")
    await put(store, late)
    await rig.settle()
    assert attachments(late) == [("ingress", "10.0.0.4/24")]


async def test_a_new_leader_rebuilds_from_the_store_and_hands_out_nothing_twice() -> None:
    store = new_store()
    net = network("net")
    await put(store, net)
    svc = service("web", [net.id])
    first = [task(svc, i) for i in range(1, 5)]
    await put(store, svc, *first)
    old_leader = Rig(store)
    await old_leader.settle()
    await store.update(lambda tx: tx.delete("tasks", first[3].id))  # .5 freed, recently
    old_leader.close()
    later = [task(svc, i) for i in range(5, 8)]
    await put(store, *later)
    new_leader = Rig(store)  # a fresh allocator: everything it knows comes from the store
    await new_leader.settle()
    live = [get(store, "tasks", t.id) for t in first[:3] + later]
    got = [a for t in live for a in addresses(t)]
    assert len(got) == len(set(got))
    assert vips(store, svc) == [("net", "10.0.0.2/24")]
    assert got == ["10.0.0.3/24", "10.0.0.4/24", "10.0.0.5/24", "10.0.0.7/24", "10.0.0.8/24", "10.0.0.9/24"]


async def test_an_allocator_behind_on_events_still_hands_out_nothing_twice() -> None:
    store = new_store()
    net = network("net")
    await put(store, net)
    svc = service("web", [net.id])
    await put(store, svc)
    a, b = Rig(store), Rig(store)
    await a.settle()
    await b.settle()
    t1 = task(svc, 1)
    await put(store, t1)
    await a.round()  # a hands out .3 (the VIP has .2); b has not seen that yet
    t2 = task(svc, 2)
    await put(store, t2)
    for event in b.sub.drain():
        if event.table == "tasks" and event.obj.id == t2.id:
            b.allocator.handle(event)
    await b.allocator.tick()  # its book lacks t1's address, but the cursor on the network moved
    assert addresses(get(store, "tasks", t1.id)) == ["10.0.0.3/24"]
    assert addresses(get(store, "tasks", t2.id)) == ["10.0.0.4/24"]


async def test_harness_runs_tasks_with_addresses_through_the_real_allocator() -> None:
    harness = Harness()
    net = network("net")
    svc = service("web", [net.id])
    svc.spec["Mode"] = {"Replicated": {"Replicas": 3}}
    await put(harness.store, make_node("n1"), net, svc)
    await harness.settle()
    tasks: list[Task] = harness.store.view(lambda tx: tx.find("tasks", service_id=svc.id))
    assert sorted(t.status.state for t in tasks) == [TaskState.RUNNING] * 3
    assert sorted(a for t in tasks for a in addresses(t)) == ["10.0.0.3/24", "10.0.0.4/24", "10.0.0.5/24"]
    node = harness.store.view(lambda tx: tx.all("nodes"))[0]
    assert [a["Addresses"] for a in node.attachments] == [["10.0.0.6/24"]]


async def test_the_leader_loop_allocates_as_events_arrive() -> None:
    store = new_store()
    net = network("net")
    svc = service("web", [net.id])
    await put(store, net, svc)
    runner = asyncio.create_task(Allocator(store).run())
    sub = store.watch(tables=("tasks",))
    try:
        t = task(svc, 1)
        await put(store, t)
        async with asyncio.timeout(10):
            while get(store, "tasks", t.id).status.state is TaskState.NEW:
                await sub.wait()
                sub.drain()
        assert addresses(get(store, "tasks", t.id)) == ["10.0.0.3/24"]  # after the service's VIP
    finally:
        sub.close()
        assert await cancel_and_wait([runner]) == []


async def test_a_task_created_while_a_round_runs_is_allocated_without_another_event() -> None:
    """The loop drains the events that landed during a round and runs another round for them;
    it must not go to sleep with work in hand (a lost wake-up left tasks NEW until an unrelated
    write came along)."""
    store = new_store()
    net = network("net")
    svc = service("web", [net.id])
    first, second = task(svc, 1), task(svc, 2)
    await put(store, net, svc, first)

    class Interleaved(Allocator):
        async def tick(self) -> bool:
            retry = await super().tick()
            if self.ticks == 1:
                await put(store, second)   # commits between this round's writes and the drain
            return retry

    runner = asyncio.create_task(Interleaved(store).run())
    sub = store.watch(tables=("tasks",))
    try:
        async with asyncio.timeout(10):
            while (t := get(store, "tasks", second.id)) is None or t.status.state is TaskState.NEW:
                await sub.wait()
                sub.drain()
        assert get(store, "tasks", first.id).status.state is TaskState.PENDING
    finally:
        sub.close()
        await cancel_and_wait([runner])


def test_only_tasks_that_need_addresses_start_new_the_others_go_straight_to_pending() -> None:
    from manager.orchestrator.common import new_task

    plain = service("plain", [])
    networked = service("net", ["n1"])
    publishing = service("pub", [])
    publishing.spec["EndpointSpec"] = {"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]}
    host_only = service("host", [])
    host_only.spec["EndpointSpec"] = {"Ports": [{"TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]}
    states = {s.name: new_task(s, 0.0, slot=1).status for s in (plain, networked, publishing, host_only)}
    assert {n: st.state for n, st in states.items()} == {
        "plain": TaskState.PENDING, "net": TaskState.NEW, "pub": TaskState.NEW, "host": TaskState.PENDING}
    assert states["plain"].message == "pending task scheduling"
