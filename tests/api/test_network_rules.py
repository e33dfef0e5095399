"""Network create and remove rules with Docker's texts and statuses, and the allocator's results
as the API shows them (network IPAM and options, Task.NetworksAttachments)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from manager.allocator import Allocator, ingress_network
from manager.store import Store
from model import Network, Task, TaskState, TaskStatus, new_id
from tests.api.support import NODE_ID, call
from tests.api.test_services import CLI_BODY, body, create

RPC = "rpc error: code = {} desc = {}"
VXLAN = "com.docker.network.driver.overlay.vxlanid_list"


async def new_network(client: TestClient, name: str, **fields: Any) -> str:
    _, created = await call(client, "POST", "/networks/create", {"Name": name, "Driver": "overlay", **fields},
                            expect=201)
    return str(created["Id"])


async def allocate(store: Store) -> None:
    allocator = Allocator(store)
    store.view(allocator.load)
    await allocator.tick()


async def error(client: TestClient, method: str, path: str, payload: Any = None) -> tuple[int, str]:
    status, err = await call(client, method, path, payload)
    return status, err["message"]


async def test_create_refusals(client: TestClient, store: Store) -> None:
    for name in ("bridge", "host", "none"):
        assert await error(client, "POST", "/networks/create", {"Name": name, "Driver": "overlay"}) == \
            (403, f"{name} is a pre-defined network and cannot be created")
    assert await error(client, "POST", "/networks/create", {"Name": "x", "Ingress": True, "Attachable": True}) == \
        (400, RPC.format("InvalidArgument", "ingress network cannot be attachable"))
    assert await error(client, "POST", "/networks/create",
                       {"Name": "x", "Labels": {"com.docker.swarm.predefined": "true"}}) == \
        (403, RPC.format("PermissionDenied", "label com.docker.swarm.predefined is for internally created "
                                             "predefined networks and cannot be applied by users"))
    for config, text in (({"Subnet": "10.9.0.0/24", "Gateway": "10.8.0.1"},
                          "ipam configuration: subnet 10.9.0.0/24 does not contain gateway 10.8.0.1"),
                         ({"Subnet": "10.9.0.0/24", "IPRange": "10.9.1.0/25"},
                          "ipam configuration: subnet 10.9.0.0/24 does not contain range 10.9.1.0/25")):
        assert await error(client, "POST", "/networks/create", {"Name": "x", "IPAM": {"Config": [config]}}) == \
            (400, RPC.format("InvalidArgument", text))
    assert await error(client, "POST", "/networks/create", {"Name": "x", "Options": {VXLAN: "abc"}}) == \
        (400, 'invalid vxlan id value "abc" passed')
    ingress = ingress_network()
    await store.update(lambda tx: tx.create(ingress))
    assert await error(client, "POST", "/networks/create", {"Name": "second", "Ingress": True}) == \
        (409, RPC.format("AlreadyExists", f"ingress network ({ingress.id}) is already present"))
    await new_network(client, "pinned", Options={VXLAN: "4200"})
    await allocate(store)
    assert await error(client, "POST", "/networks/create", {"Name": "again", "Options": {VXLAN: "4200"}}) == \
        (400, "could not assign vxlan id 4200 to pool 10.0.2.0/24: requested bit is already allocated")
    assert await error(client, "POST", "/networks/create",
                       {"Name": "inside", "IPAM": {"Config": [{"Subnet": "10.0.0.128/25"}]}}) == \
        (400, "Pool overlaps with other one on this address space: 10.0.0.128/25 overlaps 10.0.0.0/24 of "
              "network ingress")


async def test_allocated_network_as_the_api_shows_it(client: TestClient, store: Store) -> None:
    await store.update(lambda tx: tx.create(ingress_network()))
    nid = await new_network(client, "web-net", Options={"com.docker.network.driver.mtu": "1400"})
    await allocate(store)
    _, net = await call(client, "GET", f"/networks/{nid}", expect=200)
    assert net["IPAM"] == {"Driver": "default", "Options": None,
                           "Config": [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]}
    assert net["Options"] == {"com.docker.network.driver.mtu": "1400", VXLAN: "4097"}
    _, listed = await call(client, "GET", "/networks", expect=200)
    assert {n["Name"]: n["IPAM"]["Config"][0]["Subnet"] for n in listed} == {"ingress": "10.0.0.0/24",
                                                                             "web-net": "10.0.1.0/24"}


async def add_task(store: Store, network: Network, state: TaskState, desired: TaskState) -> Task:
    task = Task(id=new_id(), service_id="gone", slot=1, node_id=NODE_ID, spec={"Networks": [{"Target": network.id}]},
                status=TaskStatus(state, "2026-01-01T00:00:00Z"), desired_state=desired, service_name="web",
                networks_attachments=[{"Network": network.to_swarm_api(), "Addresses": ["10.0.1.2/24"]}])
    await store.update(lambda tx: tx.create(task))
    return task


async def test_remove_rules(client: TestClient, store: Store) -> None:
    nid = await new_network(client, "back")
    await allocate(store)
    sid = await create(client, body(TaskTemplate={**CLI_BODY["TaskTemplate"], "Networks": [{"Target": "back"}]}))
    assert await error(client, "DELETE", "/networks/back") == \
        (400, RPC.format("FailedPrecondition", f"network {nid} is in use by service {sid}"))
    await call(client, "DELETE", f"/services/{sid}", expect=200)
    network = store.view(lambda tx: tx.get("networks", nid))
    live = await add_task(store, network, TaskState.RUNNING, TaskState.RUNNING)
    assert await error(client, "DELETE", "/networks/back") == \
        (400, RPC.format("FailedPrecondition", f"network {nid} is in use by task {live.id}"))
    _, tasks = await call(client, "GET", "/tasks", expect=200)
    assert tasks[0]["NetworksAttachments"] == [{"Network": network.to_swarm_api(), "Addresses": ["10.0.1.2/24"]}]
    assert tasks[0]["NetworksAttachments"][0]["Network"]["ID"] == nid

    def stopping(tx: Any) -> None:  # told to shut down, still running: not counted (swarmkit's rule)
        task = tx.get("tasks", live.id).copy()
        task.set_desired_state(TaskState.SHUTDOWN)
        tx.update(task)
    await store.update(stopping)
    assert (await client.delete("/networks/back")).status == 204


async def test_ingress_and_predefined_removal(client: TestClient, store: Store) -> None:
    ingress = ingress_network()
    predefined = Network(id=new_id(), spec={"Name": "host", "Driver": "host", "Scope": "swarm",
                                             "Labels": {"com.docker.swarm.predefined": "true"}})
    await store.update(lambda tx: (tx.create(ingress), tx.create(predefined)))
    assert await error(client, "DELETE", f"/networks/{predefined.id}") == \
        (400, RPC.format("FailedPrecondition", f"network {predefined.id} (host) is a swarm predefined network "
                                               "and cannot be removed"))
    ports = {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}]}
    sid = await create(client, body(EndpointSpec=ports))
    assert await error(client, "DELETE", "/networks/ingress") == \
        (400, RPC.format("FailedPrecondition", f"ingress network cannot be removed because service {sid} "
                                               "depends on it"))
    host_only = {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                                           "PublishMode": "host"}]}
    _, svc = await call(client, "GET", f"/services/{sid}", expect=200)
    await call(client, "POST", f"/services/{sid}/update", {**svc["Spec"], "EndpointSpec": host_only}, expect=200,
               version=str(svc["Version"]["Index"]))
    assert (await client.delete("/networks/ingress")).status == 204
    # docker-py's test_create_network_ingress: remove the ingress, then create another one
    await new_network(client, "new-ingress", Ingress=True)
