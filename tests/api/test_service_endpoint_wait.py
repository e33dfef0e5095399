"""Service create and update answer once the allocator (its real leader loop, on the in-memory
store) wrote the service's endpoint: the inspect right after shows the VIPs and the published
port, and an update sent with the version it read is accepted. A service that needs no
allocation is answered at once, and so is every service when the cluster access says no
allocator writes into the store (an in-memory store nothing allocates on). In one process the
allocator's loop mostly writes before the client's next read even without the wait: the test
that catches the race is tests/swarm/test_service_endpoint_wait.py (real daemons, through a
follower too)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.allocator import ingress_network
from manager.api import services as services_api
from manager.store import Store
from tests.api.support import StoreCluster, allocating, build_app, call, new_store
from tests.api.test_services import body


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient, Store]]:
    """The cluster API over a store the allocator's loop runs on (and its cluster access says so)."""
    store = new_store()
    await store.update(lambda tx: tx.create(ingress_network()))
    async with allocating(store), TestClient(TestServer(build_app(StoreCluster(store, allocator=True)))) as client:
        yield client, store


async def inspect(client: TestClient, ref: str) -> dict[str, Any]:
    _, svc = await call(client, "GET", f"/services/{ref}", expect=200)
    return dict(svc)


async def test_create_inspect_update_at_once(served: tuple[TestClient, Store]) -> None:
    client, store = served
    _, front = await call(client, "POST", "/networks/create", {"Name": "front", "Driver": "overlay"}, expect=201)
    _, back = await call(client, "POST", "/networks/create", {"Name": "back", "Driver": "overlay"}, expect=201)
    ingress = store.view(lambda tx: tx.find("networks", name="ingress"))[0].id
    spec = body(Name="web", EndpointSpec={"Mode": "vip", "Ports": [{"TargetPort": 80}]},
                TaskTemplate={**body()["TaskTemplate"], "Networks": [{"Target": "front"}]})
    _, created = await call(client, "POST", "/services/create", spec, expect=201)
    svc = await inspect(client, created["ID"])
    assert [v["NetworkID"] for v in svc["Endpoint"]["VirtualIPs"]] == [ingress, front["Id"]]
    assert svc["Endpoint"]["Ports"] == [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 30000,
                                         "PublishMode": "ingress"}]
    # an update that needs a new allocation, sent with that version: accepted, and the inspect
    # after it shows the new network's VIP
    changed = svc["Spec"]
    changed["TaskTemplate"]["Networks"].append({"Target": back["Id"]})
    await call(client, "POST", f"/services/{svc['ID']}/update", changed, expect=200,
               version=str(svc["Version"]["Index"]))
    after = await inspect(client, svc["ID"])
    assert [v["NetworkID"] for v in after["Endpoint"]["VirtualIPs"]] == [ingress, front["Id"], back["Id"]]
    # and again with the version that inspect read (no updater here to write UpdateStatus)
    after["Spec"]["Labels"] = {"touched": "yes"}
    await call(client, "POST", f"/services/{svc['ID']}/update", after["Spec"], expect=200,
               version=str(after["Version"]["Index"]))


async def test_a_service_without_network_or_port_is_answered_at_once(served: tuple[TestClient, Store]) -> None:
    client, _store = served
    _, created = await call(client, "POST", "/services/create", body(Name="plain"), expect=201)
    svc = await inspect(client, created["ID"])
    assert svc["Endpoint"] == {"Spec": {"Mode": "vip"}}
    await call(client, "POST", f"/services/{svc['ID']}/update", svc["Spec"], expect=200,
               version=str(svc["Version"]["Index"]))


async def test_no_wait_when_the_cluster_access_says_no_allocator_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API asks its cluster access, and does not wait when it says nothing allocates (the
    wait itself is replaced by a recorder: whether it runs is what is checked, not how long)."""
    waited: list[str] = []

    async def recorded_wait(store: Store, service_id: str) -> bool:
        waited.append(service_id)
        return False

    monkeypatch.setattr(services_api, "wait_for_endpoint", recorded_wait)
    store = new_store()
    await store.update(lambda tx: tx.create(ingress_network()))
    async with TestClient(TestServer(build_app(StoreCluster(store)))) as client:   # nothing allocates
        _, front = await call(client, "POST", "/networks/create", {"Name": "front", "Driver": "overlay"},
                              expect=201)
        spec = body(Name="web", EndpointSpec={"Mode": "vip", "Ports": [{"TargetPort": 80}]},
                    TaskTemplate={**body()["TaskTemplate"], "Networks": [{"Target": front["Id"]}]})
        _, created = await call(client, "POST", "/services/create", spec, expect=201)
        svc = await inspect(client, created["ID"])
        changed = {**svc["Spec"], "Labels": {"v": "2"}}
        await call(client, "POST", f"/services/{svc['ID']}/update", changed, expect=200,
                   version=str(svc["Version"]["Index"]))
    assert "VirtualIPs" not in svc["Endpoint"] and "Ports" not in svc["Endpoint"]   # never allocated
    assert waited == []
    async with TestClient(TestServer(build_app(StoreCluster(store, allocator=True)))) as client:
        await call(client, "POST", f"/services/{svc['ID']}/update", changed, expect=200,
                   version=str((await inspect(client, svc["ID"]))["Version"]["Index"]))
    assert waited == [svc["ID"]]                   # and it does wait when the cluster access says yes
