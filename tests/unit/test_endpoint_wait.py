"""A service's endpoint as the allocator leaves it (manager/allocator/endpoints.py): when it is
settled, read from the store alone, and the API's wait for it on the store's watch. The pure
checks follow hand-run allocator rounds; the waits run against the allocator's real loop (or
none), with no sleeps. Whether to wait at all is the cluster access's answer: the daemon's says
yes on a manager (tests/api/test_service_endpoint_wait.py has the test double's)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aio import cancel_and_wait
from manager.allocator import Allocator, ingress_network, settled_endpoint, wait_for_endpoint
from manager.store import Store
from model import Service
from node.swarm_node import SwarmNode
from tests.support.fake_executor import FakeExecutor
from tests.unit.test_allocator import Rig, get, network, new_store, put, service, task, vips
from tests.unit.test_allocator_endpoints import port, respec


def settled(store: Store, svc: Service) -> bool:
    return store.view(lambda tx: settled_endpoint(tx, tx.get("services", svc.id)))


@asynccontextmanager
async def allocator_loop(store: Store) -> AsyncIterator[None]:
    """The allocator's leader loop on `store` for the block (a wait started before the loop runs
    sees its first round's write on the store's watch)."""
    loop = asyncio.create_task(Allocator(store).run())
    try:
        yield
    finally:
        await cancel_and_wait([loop])


async def test_settled_once_the_allocator_wrote_ports_and_vips_and_at_once_without_any() -> None:
    store = new_store()
    front = network("front")
    rig = Rig(store)
    await put(store, ingress_network())           # ingress first, as `swarm init` makes it: its subnet
    await rig.settle()                             # is the pool's first (one round picks in no set order)
    await put(store, front)
    await rig.settle()
    plain = service("plain")
    await put(store, plain)
    assert settled(store, plain)                   # no network, no published port: nothing to wait for
    web = service("web", [front.id], ports=[port(80), port(81, 8081)])
    await put(store, web)
    assert not settled(store, web)
    await rig.settle()
    assert settled(store, web)
    assert vips(store, web) == [("ingress", "10.0.0.2/24"), ("front", "10.0.1.2/24")]
    # an update that needs nothing new is settled at once; one that drops a network or asks for
    # another port is not, until the allocator wrote again
    await respec(store, web, lambda s: s.update(Labels={"v": "2"}))
    assert settled(store, web)
    await respec(store, web, lambda s: s["TaskTemplate"].update(Networks=[]))
    assert not settled(store, web)                 # the VIP on front is to be freed
    await rig.settle()
    assert settled(store, web) and vips(store, web) == [("ingress", "10.0.0.2/24")]
    await respec(store, web, lambda s: s["EndpointSpec"]["Ports"].append(port(82)))
    assert not settled(store, web)
    await rig.settle()
    assert settled(store, web)
    rr = service("rr", [front.id], mode="dnsrr")   # dnsrr: no VIP at all
    await put(store, rr)
    assert settled(store, rr)


async def test_settled_when_the_allocator_cannot_allocate() -> None:
    store = new_store()
    tiny = network("tiny", IPAM={"Config": [{"Subnet": "10.9.0.0/30"}]})  # one address: .2
    await put(store, tiny)
    holder = service("holder", [tiny.id], mode="dnsrr")
    await put(store, holder, task(holder, 1))
    rig = Rig(store)
    await rig.settle()
    # the checks the allocator makes itself: a network not found, a port another service holds
    lost = service("lost", ["nowhere"])
    await put(store, lost)
    assert settled(store, lost)
    taker, clash = service("taker", ports=[port(80, 8080)]), service("clash", ports=[port(80, 8080)])
    await put(store, taker, clash)
    assert settled(store, clash)
    # an exhausted pool: settled once the allocator wrote why into a NEW task of the current spec
    web = service("web", [tiny.id])
    await put(store, web)
    assert not settled(store, web)
    await rig.settle()
    assert not settled(store, web)                 # no task: nothing in the store says why
    first = task(web, 1)
    await put(store, first)
    await rig.settle()
    assert get(store, "tasks", first.id).status.err and settled(store, web)
    # an update to another TaskTemplate: that task's reason is no longer the service's
    await respec(store, web, lambda s: s["TaskTemplate"].update(ForceUpdate=1))
    assert not settled(store, web)


async def test_the_wait_returns_with_the_allocators_write() -> None:
    store = new_store()
    front = network("front")
    await put(store, ingress_network(), front)
    async with allocator_loop(store):
        web = service("web", [front.id], ports=[port(80)])
        await put(store, web)
        assert await wait_for_endpoint(store, web.id, bound=30)
        got = get(store, "services", web.id)
        assert [v["NetworkID"] for v in got.endpoint["VirtualIPs"]][1:] == [front.id]
        assert got.endpoint["Ports"][0]["PublishedPort"] == 30000
        version = got.version
        assert await wait_for_endpoint(store, web.id, bound=30)   # settled: at once, nothing written
        assert get(store, "services", web.id).version == version
        assert await wait_for_endpoint(store, "gone", bound=30)   # no such service: nothing to wait for


async def test_the_wait_returns_with_the_reason_the_allocator_wrote() -> None:
    store = new_store()
    tiny = network("tiny", IPAM={"Config": [{"Subnet": "10.9.0.0/30"}]})
    holder = service("holder", [tiny.id], mode="dnsrr")
    await put(store, tiny, holder, task(holder, 1))
    rig = Rig(store)
    await rig.settle()                             # the holder's task takes the one address first
    rig.close()
    async with allocator_loop(store):
        web = service("web", [tiny.id])
        await put(store, web, task(web, 1))
        assert await wait_for_endpoint(store, web.id, bound=30)   # False only once the bound passed
        assert vips(store, web) == []


async def test_the_wait_is_bounded_when_no_allocator_writes() -> None:
    store = new_store()
    front = network("front")
    await put(store, front)
    web = service("web", [front.id])
    await put(store, web)
    assert not await wait_for_endpoint(store, web.id, bound=0.05)   # nobody writes: the bound
    assert not settled(store, web)


def test_the_daemons_cluster_access_says_an_allocator_writes(tmp_path: Path) -> None:
    """Every Raft leader runs one, and its writes reach each manager's store: a manager's API
    always waits for the Endpoint write."""
    node = SwarmNode(tmp_path, listen_addr="127.0.0.1:0", advertise_addr="", hostname="h",
                     executor=FakeExecutor(), description=dict, leader_loops=[])
    assert node.allocator_writes()
