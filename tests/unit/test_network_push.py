"""The manager side of the network push (manager/dispatcher/network_index.py, network_push.py): what
each node's session tells its data path and embedded DNS, on the in-memory store.

The index's views (metadata, own address, peers on other nodes only, DNS in rotation only), then
the sessions: a complete set right after the hello, changes before the tasks that need them,
a removal when the last task leaves, pushes to other nodes without any write concerning their
own tasks, nothing sent for writes that change no view, a complete set again after the feed was
dropped, tasks without networks costing the push nothing, and the whole loop with the real
allocator, orchestrators and scheduler (bench/support/swarm_sim.py). No sleeps: messages are
awaited (with a deadline), and "nothing sent" is read off the session's state after a flush."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aio import cancel_and_wait
from bench.support.swarm_sim import Harness, make_node
from manager.allocator import ingress_network
from manager.dispatcher import Dispatcher
from manager.dispatcher.network_index import NetworkIndex
from manager.dispatcher.network_push import NetworkPush, NetworkSession
from manager.specs import normalize_service_spec
from manager.store import Store, WriteTx
from model import Cluster, Network, Node, Service, Task, TaskState, new_id
from model.endpoint import endpoint_mac as mac_of
from tests.unit.test_dispatcher_fanout import PARAMS, changes_of, next_message

VXLAN = "com.docker.network.driver.overlay.vxlanid_list"
Stream = AsyncIterator[dict[str, Any]]


# ---- objects -------------------------------------------------------------------------------------

def overlay(name: str, subnet: str, vni: int, **spec: Any) -> Network:
    """An allocated overlay network."""
    prefix = subnet.rsplit(".", 1)[0]
    return Network(id=new_id(), spec={"Name": name, "Driver": "overlay", "Labels": {}, **spec},
                   ipam={"Driver": {"Name": "default"}, "Configs": [{"Subnet": subnet, "Gateway": f"{prefix}.1"}]},
                   driver_state={"Name": "overlay", "Options": {**(spec.get("Options") or {}), VXLAN: str(vni)}})


def attachment(network: Network, address: str) -> dict[str, Any]:
    return {"Network": network.to_swarm_api(), "Addresses": [address]}


def host(name: str, addr: str, *endpoints: tuple[Network, str]) -> Node:
    node = make_node(name)
    node.status = {**node.status, "Addr": addr}
    node.attachments = [attachment(n, a) for n, a in endpoints]
    return node


def service(name: str, *networks: Network, mode: str = "vip", aliases: tuple[str, ...] = ()) -> Service:
    refs = [{"Target": n.id, **({"Aliases": list(aliases)} if aliases else {})} for n in networks]
    return Service(id=new_id(), spec={"Name": name, "Mode": {"Replicated": {"Replicas": 1}},
                                      "EndpointSpec": {"Mode": mode},
                                      "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}, "Networks": refs}})


def task_of(svc: Service, slot: int, node_id: str, *addresses: tuple[Network, str],
            state: TaskState = TaskState.ASSIGNED, hostname: str = "") -> Task:
    spec = dict(svc.spec["TaskTemplate"])
    if hostname:
        spec["ContainerSpec"] = {**spec["ContainerSpec"], "Hostname": hostname}
    task = Task(id=new_id(), service_id=svc.id, service_name=svc.name, slot=slot, node_id=node_id, spec=spec,
                networks_attachments=[attachment(n, a) for n, a in addresses])
    for step in (TaskState.ASSIGNED, TaskState.RUNNING):
        if step <= state:
            task.status.advance(step, "", step.api)
    if state > TaskState.RUNNING:
        task.status.advance(state, "", state.api)
    return task


async def put(store: Store, *objs: Any) -> None:
    await store.update(lambda tx: [tx.create(o) for o in objs])


async def edit(store: Store, table: str, obj_id: str, change: Any) -> None:
    def fn(tx: WriteTx) -> None:
        obj = tx.get(table, obj_id).copy()
        change(obj)
        tx.update(obj)
    await store.update(fn)


async def advance(store: Store, task_id: str, state: TaskState) -> None:
    await edit(store, "tasks", task_id, lambda t: t.status.advance(state, "", state.api))


async def desire(store: Store, task_id: str, state: TaskState) -> None:
    await edit(store, "tasks", task_id, lambda t: t.set_desired_state(state))


class Swarm:
    """A cluster with ingress and one overlay, two nodes with their ingress endpoints and a
    service attached to the overlay (no tasks yet)."""

    def __init__(self) -> None:
        self.store = Store()
        self.ingress = overlay("ingress", "10.0.0.0/24", 4096, Ingress=True)
        self.net = overlay("net", "10.0.1.0/24", 4097, Options={"com.docker.network.driver.mtu": "1400"})
        self.a = host("a", "198.18.0.1", (self.ingress, "10.0.0.2/24"))
        self.b = host("b", "198.18.0.2", (self.ingress, "10.0.0.3/24"))
        self.web = service("web", self.net, aliases=("www",))

    async def seed(self) -> Swarm:
        await put(self.store, Cluster(id=new_id(), spec={"Name": "default"}), self.ingress, self.net,
                  self.a, self.b, self.web)
        return self


# ---- the index: views ------------------------------------------------------------------------------

def view_of(store: Store, network: Network, node: Node) -> dict[str, Any]:
    index = NetworkIndex()
    store.view(index.load)
    return index.view(network.id, node.id)


async def test_a_view_has_the_network_its_own_address_the_peers_on_other_nodes_and_the_dns() -> None:
    s = await Swarm().seed()
    await edit(s.store, "nodes", s.a.id, lambda n: n.attachments.append(attachment(s.net, "10.0.1.2/24")))
    await edit(s.store, "nodes", s.b.id, lambda n: n.attachments.append(attachment(s.net, "10.0.1.3/24")))
    on_a = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    on_b = task_of(s.web, 2, s.b.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING, hostname="two")
    await put(s.store, on_a, on_b)
    view = view_of(s.store, s.net, s.a)
    assert {k: v for k, v in view.items() if k not in ("peers", "services")} == {
        "id": s.net.id, "name": "net", "vni": 4097, "subnet": "10.0.1.0/24", "gateway": "10.0.1.1", "mtu": 1350,
        "internal": False, "ingress": False, "attachable": False, "node_address": "10.0.1.2/24"}
    # B's task and B's own endpoint (marked as a node's); nothing of A's own.
    assert sorted(view["peers"], key=lambda p: p["ip"]) == [
        {"ip": "10.0.1.3", "mac": "02:42:0a:00:01:03", "vtep": "198.18.0.2", "node": True},
        {"ip": "10.0.1.6", "mac": "02:42:0a:00:01:06", "vtep": "198.18.0.2"}]
    assert view["services"] == [{"name": "web", "id": s.web.id, "mode": "vip", "vip": "", "aliases": ["www"],
                                 "ports": [], "tasks": [
        {"name": f"web.1.{on_a.id}", "id": on_a.id, "container_id": on_a.id, "hostname": on_a.id[:12],
         "address": "10.0.1.5", "aliases": ["www"]},
        {"name": f"web.2.{on_b.id}", "id": on_b.id, "container_id": on_b.id, "hostname": "two",
         "address": "10.0.1.6", "aliases": ["www"]}]}]
    ingress = view_of(s.store, s.ingress, s.b)
    assert ingress["ingress"] is True and ingress["mtu"] == 1450 and ingress["node_address"] == "10.0.0.3/24"
    assert ingress["peers"] == [{"ip": "10.0.0.2", "mac": "02:42:0a:00:00:02", "vtep": "198.18.0.1", "node": True}]
    assert ingress["services"] == []
    assert mac_of("10.255.0.17") == "02:42:0a:ff:00:11"


async def test_dns_holds_only_tasks_in_rotation_and_peers_hold_every_task_not_past_running() -> None:
    s = await Swarm().seed()
    rr = service("rr", s.net, mode="dnsrr")
    await put(s.store, rr)
    starting = task_of(s.web, 1, s.b.id, (s.net, "10.0.1.5/24"), state=TaskState.ASSIGNED)
    running = task_of(s.web, 2, s.b.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING)
    stopping = task_of(s.web, 3, s.b.id, (s.net, "10.0.1.7/24"), state=TaskState.RUNNING)
    stopping.set_desired_state(TaskState.SHUTDOWN)
    stopped = task_of(s.web, 4, s.b.id, (s.net, "10.0.1.8/24"), state=TaskState.SHUTDOWN)
    unplaced = task_of(s.web, 5, "", (s.net, "10.0.1.9/24"), state=TaskState.NEW)
    global_task = task_of(rr, 0, s.b.id, (s.net, "10.0.1.10/24"), state=TaskState.RUNNING)
    await put(s.store, starting, running, stopping, stopped, unplaced, global_task)
    view = view_of(s.store, s.net, s.a)
    assert sorted(p["ip"] for p in view["peers"]) == ["10.0.1.10", "10.0.1.5", "10.0.1.6", "10.0.1.7"]
    by_name = {svc["name"]: svc for svc in view["services"]}
    assert [t["id"] for t in by_name["web"]["tasks"]] == [running.id]
    assert by_name["rr"]["mode"] == "dnsrr"
    assert [t["name"] for t in by_name["rr"]["tasks"]] == [f"rr.{s.b.id}.{global_task.id}"]  # global: node ID


async def test_a_service_entry_has_its_vip_on_that_network_and_its_published_ingress_ports() -> None:
    s = await Swarm().seed()
    ports = [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 30000, "PublishMode": "ingress"},
             {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353, "PublishMode": "ingress"},
             {"Protocol": "tcp", "TargetPort": 81, "PublishedPort": 8081, "PublishMode": "host"}]

    def allocated(svc: Service) -> None:
        svc.endpoint = {"Spec": svc.spec["EndpointSpec"], "Ports": ports, "VirtualIPs": [
            {"NetworkID": s.ingress.id, "Addr": "10.0.0.9/24"}, {"NetworkID": s.net.id, "Addr": "10.0.1.4/24"}]}
    await edit(s.store, "services", s.web.id, allocated)
    rr = service("rr", s.net, mode="dnsrr")
    await put(s.store, rr)
    web = task_of(s.web, 1, s.a.id, (s.ingress, "10.0.0.10/24"), (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    other = task_of(rr, 1, s.a.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING)
    await put(s.store, web, other)
    published = [{"protocol": "tcp", "published": 30000, "target": 80},
                 {"protocol": "udp", "published": 5353, "target": 53}]
    by_name = {svc["name"]: svc for svc in view_of(s.store, s.net, s.b)["services"]}
    assert (by_name["web"]["mode"], by_name["web"]["vip"], by_name["web"]["ports"]) == ("vip", "10.0.1.4", published)
    assert (by_name["rr"]["mode"], by_name["rr"]["vip"], by_name["rr"]["ports"]) == ("dnsrr", "", [])
    on_ingress = view_of(s.store, s.ingress, s.b)["services"]
    assert [(svc["name"], svc["vip"], svc["ports"], [t["address"] for t in svc["tasks"]]) for svc in on_ingress] == \
        [("web", "10.0.0.9", published, ["10.0.0.10"])]

    # the allocator's write reaches the nodes using the network
    dispatcher = Dispatcher(s.store)
    stream = dispatcher.session(s.a.id, params(s.a))
    async with contextlib.aclosing(stream), pushing(dispatcher):  # type: ignore[type-var]
        await opening(stream)
        await edit(s.store, "services", s.web.id, lambda svc: svc.endpoint.update(VirtualIPs=[
            {"NetworkID": s.ingress.id, "Addr": "10.0.0.9/24"}]))   # its VIP on net is gone
        message = await next_message(stream)
        entries = {(v["name"], svc["name"]): svc["vip"] for v in message["networks"] for svc in v["services"]}
        assert entries[("net", "web")] == ""


# ---- sessions ----------------------------------------------------------------------------------------

async def opening(stream: Stream) -> list[dict[str, Any]]:
    """The messages of a session's opening, up to its node message."""
    messages = []
    while True:
        messages.append(await next_message(stream))
        if messages[-1]["kind"] == "node":
            return messages


def params(node: Node) -> dict[str, Any]:
    """A session's parameters, keeping the node's data-path address."""
    return {**PARAMS, "addr": node.status["Addr"]}


async def applied(dispatcher: Dispatcher, node_id: str, hello: dict[str, Any], message: dict[str, Any]) -> None:
    """The node's agent acknowledges a networks message, as after applying its views."""
    await dispatcher.networks_applied(node_id, {"session_id": hello["session_id"], "seq": message["seq"]})


def session_of(dispatcher: Dispatcher, node_id: str) -> NetworkSession:
    return dispatcher._networks._sessions[node_id][0]


def names(message: dict[str, Any]) -> list[str]:
    return [view["name"] for view in message["networks"]]


@contextlib.asynccontextmanager
async def pushing(dispatcher: Dispatcher) -> AsyncIterator[NetworkPush]:
    """The push's leader loop, as the dispatcher's `run` holds it."""
    loop = asyncio.create_task(dispatcher._networks.run())
    try:
        yield dispatcher._networks
    finally:
        assert await cancel_and_wait([loop]) == []


async def test_a_complete_set_comes_first_then_a_new_network_before_the_task_that_uses_it() -> None:
    s = await Swarm().seed()
    before = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"))
    await put(s.store, before)
    dispatcher = Dispatcher(s.store)
    stream = dispatcher.session(s.a.id, params(s.a))
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        messages = await opening(stream)
        assert [(m["kind"], m.get("type")) for m in messages][:3] == [
            ("session", None), ("networks", "complete"), ("assignments", "complete")]
        networks = messages[1]
        assert networks["data_path_port"] == 4789 and networks["removed"] == []
        assert sorted(names(networks)) == ["ingress", "net"]
        assert [t["id"] for t in messages[2]["tasks"]] == [before.id]

        other = overlay("other", "10.0.2.0/24", 4098)
        await put(s.store, other)
        dispatcher._networks.flush()
        assert not session_of(dispatcher, s.a.id).pending()   # nobody on A uses it
        new = task_of(s.web, 2, s.a.id, (other, "10.0.2.5/24"))
        await put(s.store, new)
        message = await next_message(stream)
        assert message["kind"] == "networks" and message["type"] == "incremental"
        assert names(message) == ["other"] and message["removed"] == []
        assert changes_of(await next_message(stream)) == [("update", new.id)]


async def test_a_node_loses_a_network_when_its_last_task_there_stops() -> None:
    s = await Swarm().seed()
    one = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    two = task_of(s.web, 2, s.a.id, (s.net, "10.0.1.6/24"), state=TaskState.RUNNING)
    await put(s.store, one, two)
    dispatcher = Dispatcher(s.store)
    stream = dispatcher.session(s.a.id, params(s.a))
    async with contextlib.aclosing(stream), pushing(dispatcher) as push:  # type: ignore[type-var]
        hello = (await opening(stream))[0]
        session = session_of(dispatcher, s.a.id)
        await desire(s.store, one.id, TaskState.SHUTDOWN)   # out of DNS (its own node's DNS too), then the task
        message = await next_message(stream)
        assert message["kind"] == "networks" and names(message) == ["net"]
        assert [t["id"] for t in message["networks"][0]["services"][0]["tasks"]] == [two.id]
        await applied(dispatcher, s.a.id, hello, message)  # (the stop waits for it: test_dispatcher_drain.py)
        assert changes_of(await next_message(stream)) == [("update", one.id)]
        await advance(s.store, one.id, TaskState.SHUTDOWN)  # stopped: A still uses net, and its own peers
        push.flush()                                         # are not in its view: nothing to send
        assert not session.pending()
        await desire(s.store, two.id, TaskState.SHUTDOWN)
        message = await next_message(stream)
        assert message["networks"][0]["services"] == [
            {"name": "web", "id": s.web.id, "mode": "vip", "vip": "", "aliases": ["www"], "ports": [], "tasks": []}]
        await applied(dispatcher, s.a.id, hello, message)
        assert changes_of(await next_message(stream)) == [("update", two.id)]
        await advance(s.store, two.id, TaskState.SHUTDOWN)  # the last one: the network goes
        message = await next_message(stream)
        assert message["kind"] == "networks" and message["type"] == "incremental"
        assert message["networks"] == [] and message["removed"] == [s.net.id]


async def test_changes_on_one_node_reach_the_other_nodes_using_the_network_and_only_them() -> None:
    s = await Swarm().seed()
    c = host("c", "198.18.0.3", (s.ingress, "10.0.0.4/24"))
    await put(s.store, c)
    on_a = task_of(s.web, 1, s.a.id, (s.net, "10.0.1.5/24"), state=TaskState.RUNNING)
    on_b = task_of(s.web, 2, s.b.id, (s.net, "10.0.1.6/24"))
    await put(s.store, on_a, on_b)
    dispatcher = Dispatcher(s.store)
    streams = {n.id: dispatcher.session(n.id, params(n)) for n in (s.a, s.b, c)}
    async with contextlib.AsyncExitStack() as stack, pushing(dispatcher):
        for stream in streams.values():
            await stack.enter_async_context(contextlib.aclosing(stream))  # type: ignore[type-var]
            await opening(stream)
        stream_a = streams[s.a.id]

        await advance(s.store, on_b.id, TaskState.RUNNING)   # B's task starts: A sees it in DNS at once
        message = await next_message(stream_a)
        assert message["type"] == "incremental" and names(message) == ["net"]
        tasks = message["networks"][0]["services"][0]["tasks"]
        assert sorted(t["id"] for t in tasks) == sorted([on_a.id, on_b.id])
        message = await next_message(streams[s.b.id])         # B's DNS too (its peers stay the same)
        assert names(message) == ["net"] and message["networks"][0]["peers"] == [
            {"ip": "10.0.1.5", "mac": "02:42:0a:00:01:05", "vtep": "198.18.0.1"}]
        assert not session_of(dispatcher, c.id).pending()     # C does not use the network

        await desire(s.store, on_b.id, TaskState.SHUTDOWN)    # stopping: out of DNS at once, still a peer
        message = await next_message(stream_a)
        view = message["networks"][0]
        assert [t["id"] for t in view["services"][0]["tasks"]] == [on_a.id]
        assert [p["ip"] for p in view["peers"]] == ["10.0.1.6"]
        await advance(s.store, on_b.id, TaskState.SHUTDOWN)   # stopped: no longer a peer
        message = await next_message(stream_a)
        assert message["networks"][0]["peers"] == []

        await edit(s.store, "nodes", s.b.id, lambda n: n.status.update(Addr="198.18.0.22"))  # B's VTEP moves
        message = await next_message(stream_a)               # A's ingress view: B's endpoint has a new VTEP
        assert names(message) == ["ingress"]
        assert {p["vtep"] for p in message["networks"][0]["peers"]} == {"198.18.0.22", "198.18.0.3"}


async def test_nothing_is_sent_for_writes_that_change_no_view() -> None:
    s = await Swarm().seed()
    on_b = task_of(s.web, 1, s.b.id, (s.net, "10.0.1.6/24"))
    on_a = task_of(s.web, 2, s.a.id, (s.net, "10.0.1.5/24"))
    await put(s.store, on_a, on_b)
    dispatcher = Dispatcher(s.store)
    stream = dispatcher.session(s.a.id, params(s.a))
    async with contextlib.aclosing(stream), pushing(dispatcher) as push:  # type: ignore[type-var]
        await opening(stream)
        session = session_of(dispatcher, s.a.id)
        built = push.index.views_built
        for state in (TaskState.ACCEPTED, TaskState.PREPARING, TaskState.READY, TaskState.STARTING):
            await advance(s.store, on_b.id, state)             # B's task on its way: the same peer, no DNS yet
        await edit(s.store, "services", s.web.id, lambda v: v.spec.update(Labels={"x": "y"}))
        await edit(s.store, "nodes", s.b.id, lambda n: n.description.update(Hostname="bee"))
        await edit(s.store, "networks", s.net.id, lambda n: n.address_cursor.update({"10.0.1.0/24": "10.0.1.9"}))
        push.flush()
        assert session.pending() is False and push.index.views_built == built
        await advance(s.store, on_b.id, TaskState.RUNNING)     # then a change: the very next message
        message = await next_message(stream)
        assert message["kind"] == "networks" and names(message) == ["net"]
        assert push.index.views_built == built + 1


async def test_a_dropped_feed_rebuilds_the_index_and_resends_a_complete_set() -> None:
    s = Swarm()
    s.store = Store(watch_limit=3)
    await s.seed()
    dispatcher = Dispatcher(s.store)
    stream = dispatcher.session(s.a.id, params(s.a))
    async with contextlib.aclosing(stream), pushing(dispatcher) as push:  # type: ignore[type-var]
        assert sorted(names((await opening(stream))[1])) == ["ingress"]
        made = [task_of(s.web, i, s.b.id, (s.net, f"10.0.1.{10 + i}/24")) for i in range(5)]
        for t in made:   # one entry each, no await between that lets the push drain: its feed overflows
            await put(s.store, t)
        await put(s.store, task_of(s.web, 9, s.a.id, (s.net, "10.0.1.9/24")))
        message = await next_message(stream)
        assert message["kind"] == "networks" and message["type"] == "complete"
        assert sorted(names(message)) == ["ingress", "net"]
        net = next(v for v in message["networks"] if v["name"] == "net")
        assert sorted(p["ip"] for p in net["peers"]) == sorted(f"10.0.1.{10 + i}" for i in range(5))
        assert push.resyncs == 1
        assert changes_of(await next_message(stream))[0][0] == "update"


async def test_tasks_without_networks_cost_the_push_nothing() -> None:
    s = await Swarm().seed()
    dispatcher = Dispatcher(s.store)
    streams = [dispatcher.session(n.id, params(n)) for n in (s.a, s.b)]
    async with contextlib.AsyncExitStack() as stack, pushing(dispatcher) as push:
        for stream in streams:
            await stack.enter_async_context(contextlib.aclosing(stream))  # type: ignore[type-var]
            await opening(stream)
        events, built, flushes = push.index.events, push.index.views_built, push.flushes
        plain = [Task(id=new_id(), service_id="svc", slot=i, node_id=s.a.id, spec={"ContainerSpec": {"Image": "x"}})
                 for i in range(1, 51)]
        await put(s.store, *plain)
        for t in plain:
            await advance(s.store, t.id, TaskState.ASSIGNED)
            await advance(s.store, t.id, TaskState.RUNNING)
        assert push._sub is not None and push._sub.pending() == 0   # filtered before it was even queued
        push.flush()
        assert (push.index.events, push.index.views_built, push.flushes) == (events, built, flushes)
        assert (await next_message(streams[0]))["kind"] == "assignments"   # the tasks went their way
    assert push.sessions() == 0 and push._sub is None   # closed sessions leave no feed behind


async def test_with_the_real_control_loops_scaling_and_a_node_failure_reach_every_node() -> None:
    harness = Harness()
    store = harness.store
    nodes = [host(f"n{i}", f"198.18.0.{i}") for i in range(1, 4)]
    net = Network(id=new_id(), spec={"Name": "app", "Driver": "overlay", "Labels": {}})
    await put(store, Cluster(id=new_id(), spec={"Name": "default"}), ingress_network(), net, *nodes)
    web = Service(id=new_id(), spec=normalize_service_spec({
        "Name": "web", "Mode": {"Replicated": {"Replicas": 3}},
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}, "Networks": [{"Target": net.id}]}}))
    await put(store, web)
    await harness.settle()
    dispatcher = Dispatcher(store)
    told: dict[str, dict[str, dict[str, Any]]] = {n.id: {} for n in nodes}  # node -> network name -> view
    heard = asyncio.Event()

    def read(node_id: str, message: dict[str, Any]) -> None:
        if message["kind"] != "networks":
            return
        if message["type"] == "complete":
            told[node_id] = {}
        told[node_id] = {name: view for name, view in told[node_id].items() if view["id"] not in message["removed"]}
        told[node_id].update((view["name"], view) for view in message["networks"])
        heard.set()

    async def listen(node: Node) -> None:
        async with contextlib.aclosing(dispatcher.session(node.id, params(node))) as stream:  # type: ignore[type-var]
            async for message in stream:
                read(node.id, message)

    async def until(check: Any) -> None:
        """Until what the nodes were told satisfies `check` (a deadline, not a sleep)."""
        while not check():
            heard.clear()
            await asyncio.wait_for(heard.wait(), 5)

    def dns(node_id: str) -> set[str]:
        view = told[node_id].get("app") or {}
        return {t["id"] for svc in view.get("services", []) for t in svc["tasks"]}

    def tasks(**where: Any) -> list[Task]:
        return store.view(lambda tx: tx.find("tasks", **where))

    def in_rotation() -> set[str]:
        return {t.id for t in tasks(service_id=web.id)
                if t.status.state == TaskState.RUNNING and t.desired_state <= TaskState.RUNNING}

    async with pushing(dispatcher), asyncio.TaskGroup() as group:
        listeners = [group.create_task(listen(n)) for n in nodes]
        users = {t.node_id for t in tasks(service_id=web.id)}
        assert len(in_rotation()) == 3
        await until(lambda: all("ingress" in told[n.id] for n in nodes) and all(dns(n) == in_rotation() for n in users))
        assert {n.id for n in nodes if "app" in told[n.id]} == users
        vip = store.view(lambda tx: tx.get("services", web.id)).endpoint["VirtualIPs"]   # the allocator's
        assert [v["NetworkID"] for v in vip] == [net.id]
        assert {told[n]["app"]["services"][0]["vip"] for n in users} == {vip[0]["Addr"].split("/")[0]}

        await edit(store, "services", web.id, lambda v: v.spec.update(Mode={"Replicated": {"Replicas": 6}}))
        await harness.settle()
        assert len(in_rotation()) == 6
        await until(lambda: all(dns(n.id) == in_rotation() for n in nodes))
        for node in nodes:   # peers: the tasks and endpoints on the other nodes, nothing of its own
            mine = {a["Addresses"][0].split("/")[0] for t in tasks(node_id=node.id) for a in t.networks_attachments}
            others = {a["Addresses"][0].split("/")[0] for t in tasks(service_id=web.id) if t.node_id != node.id
                      for a in t.networks_attachments}
            peers = {p["ip"] for p in told[node.id]["app"]["peers"]}
            assert others <= peers and not peers & mine
            vteps = {p["vtep"] for p in told[node.id]["app"]["peers"]}
            assert vteps <= {n.status["Addr"] for n in nodes if n is not node}

        failed = nodes[0]
        await edit(store, "nodes", failed.id, lambda n: n.status.update(State="down"))
        await harness.settle()
        lost = {t.id for t in tasks(node_id=failed.id)}
        assert lost and not lost & in_rotation() and len(in_rotation()) == 6
        await until(lambda: all(dns(n.id) == in_rotation() for n in nodes[1:]))
        for listener in listeners:
            listener.cancel()


async def test_a_new_data_path_port_resends_every_node_a_complete_set() -> None:
    s = await Swarm().seed()
    dispatcher = Dispatcher(s.store)
    stream = dispatcher.session(s.b.id, params(s.b))
    async with contextlib.aclosing(stream), pushing(dispatcher):  # type: ignore[type-var]
        await opening(stream)
        cluster = s.store.view(lambda tx: tx.all("clusters"))[0]
        await edit(s.store, "clusters", cluster.id, lambda c: setattr(c, "data_path_port", 7789))
        message = await next_message(stream)
        assert (message["type"], message["data_path_port"], names(message)) == ("complete", 7789, ["ingress"])

