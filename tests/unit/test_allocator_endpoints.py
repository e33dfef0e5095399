"""The allocator's service endpoints on the in-memory store: virtual IPs (one per network in vip
mode, ingress first, kept across updates and leader changes, freed by dnsrr, a dropped network or
the service's removal, exhaustion) and published ports (30000-32767 for a port asked as 0, per
protocol, sticky; conflicts re-checked; tasks waiting for their service's endpoint). Rounds are
driven by hand; no sleeps."""

from __future__ import annotations

from typing import Any

from manager.allocator import ingress_network
from manager.allocator.ports import DYNAMIC_FIRST, DYNAMIC_LAST, PortClaims, allocate_ports, port_conflict
from manager.store import Store, WriteTx
from model import Service, TaskState
from tests.unit.test_allocator import Rig, addresses, get, network, new_store, put, service, task, vips


def published(store: Store, svc: Service) -> list[tuple[str, int, int, str]]:
    got = get(store, "services", svc.id)
    return [(p["Protocol"], p["TargetPort"], p.get("PublishedPort", 0), p["PublishMode"])
            for p in got.endpoint.get("Ports") or []]


def port(target: int, published_port: int = 0, protocol: str = "tcp", mode: str = "ingress") -> dict[str, Any]:
    out: dict[str, Any] = {"Protocol": protocol, "TargetPort": target, "PublishMode": mode}
    if published_port:
        out["PublishedPort"] = published_port
    return out


async def respec(store: Store, svc: Service, change: Any) -> None:
    """An API update: a new spec (the endpoint's Spec follows), allocations left to the allocator."""
    def write(tx: WriteTx) -> None:
        current = tx.get("services", svc.id).copy()
        change(current.spec)
        current.endpoint = {**current.endpoint, "Spec": current.spec.get("EndpointSpec") or {}}
        tx.update(current)
    await store.update(write)


async def test_a_vip_per_network_ingress_first_kept_across_updates_and_a_new_leader() -> None:
    store = new_store()
    ingress, front, back = ingress_network(), network("front"), network("back")
    for n in (ingress, front, back):
        await put(store, n)
    web = service("web", [front.id, back.id], ports=[port(80, 8080)])
    await put(store, web)
    rig = Rig(store)
    await rig.settle()
    assert vips(store, web) == [("ingress", "10.0.0.2/24"), ("front", "10.0.1.2/24"), ("back", "10.0.2.2/24")]
    endpoint = get(store, "services", web.id).endpoint
    assert endpoint["Spec"] == web.spec["EndpointSpec"]
    version = get(store, "services", web.id).version
    await rig.settle()
    assert get(store, "services", web.id).version == version          # nothing changed: nothing written
    # an update (the networks in another order, a label): the same addresses, in spec order
    await respec(store, web, lambda s: (s["TaskTemplate"].update(Networks=[{"Target": back.id},
                                                                            {"Target": front.id}]),
                                        s.update(Labels={"v": "2"})))
    await rig.settle()
    assert vips(store, web) == [("ingress", "10.0.0.2/24"), ("back", "10.0.2.2/24"), ("front", "10.0.1.2/24")]
    # a new leader rebuilds from the store: the VIPs are held, new addresses go elsewhere
    rig.close()
    late = service("late", [front.id])
    await put(store, late)
    new_leader = Rig(store)
    await new_leader.settle()
    assert vips(store, web)[2] == ("front", "10.0.1.2/24") and vips(store, late) == [("front", "10.0.1.3/24")]
    t = task(late, 1)
    await put(store, t)
    await new_leader.settle()
    assert addresses(get(store, "tasks", t.id)) == ["10.0.1.4/24"]


async def test_vips_are_freed_by_dnsrr_a_dropped_network_unpublishing_and_removal() -> None:
    store = new_store()
    ingress, front, back = ingress_network(), network("front"), network("back")
    for n in (ingress, front, back):
        await put(store, n)
    web = service("web", [front.id, back.id], ports=[port(80, 8080)])
    await put(store, web)
    rig = Rig(store)
    await rig.settle()
    assert rig.allocator.book.used_on(back.id) == {int.from_bytes(bytes([10, 0, 2, 2])): 1}
    await respec(store, web, lambda s: s["TaskTemplate"].update(Networks=[{"Target": front.id}]))
    await rig.settle()
    assert vips(store, web) == [("ingress", "10.0.0.2/24"), ("front", "10.0.1.2/24")]
    assert rig.allocator.book.used_on(back.id) == {}
    await respec(store, web, lambda s: s["EndpointSpec"].update(Ports=[port(80, 8080, mode="host")]))
    await rig.settle()
    assert vips(store, web) == [("front", "10.0.1.2/24")]                # no ingress port: no ingress VIP
    await respec(store, web, lambda s: s["EndpointSpec"].update(Mode="dnsrr"))
    await rig.settle()
    assert vips(store, web) == [] and rig.allocator.book.used_on(front.id) == {}
    assert published(store, web) == [("tcp", 80, 8080, "host")]
    await respec(store, web, lambda s: s["EndpointSpec"].update(Mode="vip"))
    await rig.settle()
    assert vips(store, web) == [("front", "10.0.1.3/24")]    # a new address: the freed one is not reused at once
    await store.update(lambda tx: tx.delete("services", web.id))
    await rig.settle()
    assert rig.allocator.book.used_on(front.id) == {} and rig.allocator.book.used_on(ingress.id) == {}


async def test_no_vip_without_networks_nor_for_a_service_that_needs_nothing() -> None:
    store = new_store()
    await put(store, ingress_network())
    plain = service("plain")
    host_only = service("host", ports=[port(80, 8080, mode="host")])
    await put(store, plain, host_only)
    rig = Rig(store)
    await rig.settle()
    assert get(store, "services", plain.id).endpoint == {}            # never written
    assert get(store, "services", host_only.id).endpoint == {"Spec": host_only.spec["EndpointSpec"],
                                                             "Ports": [port(80, 8080, mode="host")]}


async def test_auto_ports_per_protocol_sticky_and_avoiding_every_port_spoken_for() -> None:
    store = new_store()
    await put(store, ingress_network())
    taken = service("taken", ports=[port(80, 30000), port(81, 30001, mode="host")])
    await put(store, taken)
    rig = Rig(store)
    await rig.settle()
    web = service("web", ports=[port(80), port(53, 0, "udp"), port(443, 30002), port(444)])
    await put(store, web)
    await rig.settle()
    # 30000 and 30001 are someone else's (ingress and host mode), 30002 its own explicit port
    assert published(store, web) == [("tcp", 80, 30003, "ingress"), ("udp", 53, 30000, "ingress"),
                                     ("tcp", 443, 30002, "ingress"), ("tcp", 444, 30004, "ingress")]
    assert get(store, "services", web.id).spec["EndpointSpec"]["Ports"][0] == port(80)   # the spec keeps 0
    # sticky across updates (another port added in front) and a new leader
    await respec(store, web, lambda s: s["EndpointSpec"]["Ports"].insert(0, port(8000)))
    rig.close()
    leader = Rig(store)
    await leader.settle()
    assert published(store, web) == [("tcp", 8000, 30005, "ingress"), ("tcp", 80, 30003, "ingress"),
                                     ("udp", 53, 30000, "ingress"), ("tcp", 443, 30002, "ingress"),
                                     ("tcp", 444, 30004, "ingress")]
    # removing the service frees its ports for the next one
    await store.update(lambda tx: tx.delete("services", web.id))
    again = service("again", ports=[port(80)])
    await put(store, again)
    await leader.settle()
    assert published(store, again) == [("tcp", 80, 30002, "ingress")]


async def test_a_port_conflict_found_by_the_allocator_holds_the_services_tasks_with_the_reason() -> None:
    store = new_store()
    await put(store, ingress_network())
    first = service("first", ports=[port(80, 8080)])
    second = service("second", ports=[port(80, 8080)])   # written behind the API's back (an old log, a race)
    t = task(second, 1)
    await put(store, first)
    rig = Rig(store)
    await rig.settle()
    await put(store, second, t)
    await rig.settle()
    assert published(store, second) == []
    waiting = get(store, "tasks", t.id)
    assert waiting.status.state is TaskState.NEW
    assert waiting.status.err == f"port '8080' is already in use by service 'first' ({first.id}) as an ingress port"
    await store.update(lambda tx: tx.delete("services", first.id))    # the port is free: both move on
    await rig.settle()
    assert published(store, second) == [("tcp", 80, 8080, "ingress")]
    moved = get(store, "tasks", t.id)
    assert moved.status.state is TaskState.PENDING and moved.status.err == ""
    assert [a["Network"]["Spec"]["Name"] for a in moved.networks_attachments] == ["ingress"]


async def test_an_exhausted_network_holds_the_vip_and_the_tasks_until_an_address_is_freed() -> None:
    store = new_store()
    tiny = network("tiny", IPAM={"Config": [{"Subnet": "10.9.0.0/30"}]})  # one address: .2
    await put(store, tiny)
    holder = service("holder", [tiny.id], mode="dnsrr")
    held = task(holder, 1)
    await put(store, holder, held)
    rig = Rig(store)
    await rig.settle()
    assert addresses(get(store, "tasks", held.id)) == ["10.9.0.2/30"]
    web = service("web", [tiny.id])
    t = task(web, 1)
    await put(store, web, t)
    await rig.settle()
    reason = 'no IP address left on network "tiny" (10.9.0.0/30) for the service\'s virtual IP'
    assert rig.allocator.failed_services == {web.id: reason}
    assert get(store, "tasks", t.id).status.err == reason and vips(store, web) == []
    await store.update(lambda tx: tx.delete("tasks", held.id))
    await rig.settle()
    assert vips(store, web) == [("tiny", "10.9.0.2/30")] and rig.allocator.failed_services == {}
    waiting = get(store, "tasks", t.id)     # the VIP took the only address: the task says so now
    assert waiting.status.state is TaskState.NEW
    assert waiting.status.err == 'no IP address left on network "tiny" (10.9.0.0/30)'


async def test_an_ingress_created_later_gives_publishing_services_their_ingress_vip() -> None:
    store = new_store()
    web = service("web", ports=[port(80, 8080)])
    await put(store, web)
    rig = Rig(store)
    await rig.settle()
    assert vips(store, web) == [] and published(store, web) == [("tcp", 80, 8080, "ingress")]
    await put(store, ingress_network())
    await rig.settle()
    assert vips(store, web) == [("ingress", "10.0.0.2/24")]


def test_port_rules_without_a_store() -> None:
    holder = Service(id="h", spec={"Name": "h", "EndpointSpec": {
        "Ports": [port(80, 8080), port(81, 9090, mode="host")]}}, endpoint={"Ports": [port(82, 30000)]})
    assert port_conflict({"EndpointSpec": {"Ports": [port(1, 30000)]}}, [holder]) == \
        "port '30000' is already in use by service 'h' (h) as an ingress port"     # an allocated auto port
    assert port_conflict({"EndpointSpec": {"Ports": [port(1, 9090, mode="host")]}}, [holder]) is None
    assert port_conflict({"EndpointSpec": {"Ports": [port(1, 9090, "udp")]}}, [holder]) is None
    assert port_conflict({"EndpointSpec": {"Ports": [port(1, 8080)]}}, [holder], service_id="h") is None
    # the dynamic range runs out, per protocol
    everything = Service(id="all", spec={"Name": "all", "EndpointSpec": {"Ports": [
        port(1, n) for n in range(DYNAMIC_FIRST, DYNAMIC_LAST + 1)]}})
    asking = Service(id="x", spec={"Name": "x", "EndpointSpec": {"Ports": [port(80), port(80, 0, "udp")]}})
    assert allocate_ports(asking, lambda: PortClaims([everything])) == "no published port left in 30000-32767/tcp"
    udp_only = Service(id="y", spec={"Name": "y", "EndpointSpec": {"Ports": [port(80, 0, "udp")]}})
    assert allocate_ports(udp_only, lambda: PortClaims([everything])) == [port(80, 30000, "udp")]
    # all ports held already: the others are not even looked at
    held = Service(id="z", spec={"Name": "z", "EndpointSpec": {"Ports": [port(80), port(81, 8081)]}},
                   endpoint={"Ports": [port(80, 30005), port(81, 8081)]})
    assert allocate_ports(held, lambda: (_ for _ in ()).throw(AssertionError("scanned"))) == \
        [port(80, 30005), port(81, 8081)]
