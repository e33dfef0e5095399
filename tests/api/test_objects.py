"""Tasks, secrets, configs and networks endpoints, and the 503s of nodes without a store."""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from manager.api.cluster import NOT_IN_SWARM, WORKER_NODE
from manager.store import Store
from model import Task, TaskState, TaskStatus, new_id
from tests.api.support import NODE_ID, StoreCluster, add_node, build_app, call
from tests.api.test_services import CLI_BODY, body, create

STAMP = "2026-01-01T00:00:00.000000000Z"


async def add_task(store: Store, service_id: str, slot: int, spec: dict[str, Any],
                   desired: TaskState = TaskState.RUNNING, node_id: str = NODE_ID) -> Task:
    task = Task(id=new_id(), service_id=service_id, slot=slot, node_id=node_id, spec=spec,
                status=TaskStatus(TaskState.RUNNING, STAMP), desired_state=desired, service_name="web")
    await store.update(lambda tx: tx.create(task))
    return task


async def test_task_filters(client: TestClient, store: Store) -> None:
    await add_node(store)
    sid = await create(client, body(Labels={"com.docker.stack.namespace": "st"}))
    other = await create(client, body(Name="db"))
    _, svc = await call(client, "GET", f"/services/{sid}")
    current = svc["Spec"]["TaskTemplate"]
    fresh = await add_task(store, sid, 1, current)
    stale = await add_task(store, sid, 2, {**current, "ForceUpdate": 7})
    old = await add_task(store, sid, 1, current, desired=TaskState.SHUTDOWN)
    await add_task(store, other, 1, current)

    async def ids(filters: Any) -> set[str]:
        _, out = await call(client, "GET", "/v1.47/tasks", expect=200, filters=json.dumps(filters))
        return {t["ID"] for t in out}

    assert await ids({"service": {"web": True}}) == {fresh.id, stale.id, old.id}
    assert await ids({"service": [sid]}) == {fresh.id, stale.id, old.id}
    assert await ids({"_up-to-date": {"true": True}, "service": {sid: True}}) == {fresh.id, old.id}
    assert await ids({"service": ["web"], "desired-state": ["running"]}) == {fresh.id, stale.id}
    assert await ids({"service": {"web": True}, "desired-state": {"shutdown": True}}) == {old.id}
    assert await ids({"label": ["com.docker.stack.namespace=st"]}) == {fresh.id, stale.id, old.id}
    assert await ids({"node": ["node-a"], "id": [fresh.id[:8]]}) == {fresh.id}
    assert await ids({"name": ["web.2"]}) == {stale.id}
    status, err = await call(client, "GET", "/tasks", filters=json.dumps({"service": ["nosuch"]}))
    assert status == 404 and err["message"] == "service nosuch not found"
    status, err = await call(client, "GET", "/tasks", filters=json.dumps({"desired-state": ["bogus"]}))
    assert status == 400
    status, err = await call(client, "GET", "/tasks", filters=json.dumps({"colour": ["red"]}))
    assert status == 400 and err["message"] == "invalid filter 'colour'"
    _, task = await call(client, "GET", f"/tasks/{fresh.id}", expect=200)
    assert task["Slot"] == 1 and task["DesiredState"] == "running" and task["NodeID"] == NODE_ID
    assert task["Spec"]["ContainerSpec"]["Image"] == "busybox:latest"
    status, err = await call(client, "GET", "/tasks/nosuch")
    assert status == 404 and err["message"] == "task nosuch not found"


async def test_secret_lifecycle_never_returns_data(client: TestClient) -> None:
    data = base64.b64encode(b"hunter2").decode()
    _, created = await call(client, "POST", "/v1.47/secrets/create",
                            {"Name": "pw", "Labels": {"a": "1"}, "Data": data}, expect=201)
    sid = created["ID"]
    _, listed = await call(client, "GET", "/secrets", expect=200)
    _, one = await call(client, "GET", "/secrets/pw", expect=200)
    for obj in (*listed, one):
        assert "Data" not in obj["Spec"] and "hunter2" not in json.dumps(obj) and data not in json.dumps(obj)
    assert one["Spec"] == {"Name": "pw", "Labels": {"a": "1"}}
    status, err = await call(client, "POST", "/secrets/create", {"Name": "pw", "Data": data})
    assert status == 409 and err["message"].endswith("secret pw already exists")
    status, err = await call(client, "POST", "/secrets/create", {"Name": "x", "Data": "not base64!"})
    assert status == 400 and "SecretSpec.Data" in err["message"]
    version = one["Version"]["Index"]
    status, err = await call(client, "POST", f"/secrets/{sid}/update", {"Name": "pw", "Data": "b3RoZXI="},
                             version=version)
    assert status == 400 and "only updates to Labels are allowed" in err["message"]
    await call(client, "POST", f"/secrets/{sid}/update", {"Name": "pw", "Labels": {"b": "2"}}, expect=200,
               version=version)
    _, one = await call(client, "GET", f"/secrets/{sid}")
    assert one["Spec"]["Labels"] == {"b": "2"}
    status, err = await call(client, "POST", f"/secrets/{sid}/update", {"Name": "pw"}, version=version)
    assert status == 500 and "update out of sequence" in err["message"]
    _, found = await call(client, "GET", "/secrets", filters=json.dumps({"names": ["p"]}))
    assert found == []
    _, found = await call(client, "GET", "/secrets", filters=json.dumps({"name": {"p": True}}))
    assert [s["ID"] for s in found] == [sid]
    # in use by a service
    template = {**CLI_BODY["TaskTemplate"], "ContainerSpec": {
        "Image": "busybox", "Secrets": [{"SecretID": sid, "SecretName": "pw", "File": {"Name": "pw"}}]}}
    await create(client, body(TaskTemplate=template))
    status, err = await call(client, "DELETE", "/secrets/pw")
    assert status == 400
    assert err["message"] == ("rpc error: code = InvalidArgument desc = secret 'pw' is in use by the following "
                              "service: web")
    await call(client, "DELETE", "/services/web", expect=200)
    resp = await client.delete("/secrets/pw")
    assert resp.status == 204
    status, err = await call(client, "GET", "/secrets/pw")
    assert status == 404 and err["message"] == "secret pw not found"


async def test_config_returns_data(client: TestClient) -> None:
    data = base64.b64encode(b"port=80").decode()
    _, created = await call(client, "POST", "/configs/create", {"Name": "cfg", "Data": data}, expect=201)
    _, one = await call(client, "GET", f"/configs/{created['ID']}", expect=200)
    assert one["Spec"] == {"Name": "cfg", "Labels": {}, "Data": data}
    status, err = await call(client, "POST", "/configs/create", {"Name": "nodata"})
    assert status == 400 and "ConfigSpec.Data" in err["message"]
    assert (await client.delete("/configs/cfg")).status == 204


async def test_networks(client: TestClient) -> None:
    status, created = await call(client, "POST", "/v1.47/networks/create", {
        "Name": "n1", "Driver": "overlay", "Scope": "", "CheckDuplicate": True, "Attachable": True,
        "Labels": {"com.docker.stack.namespace": "st"},
        "IPAM": {"Driver": "default", "Options": {}, "Config": [{"Subnet": "10.9.0.0/24"}]}}, expect=201)
    assert created == {"Id": created["Id"], "Warning": ""}
    nid = created["Id"]
    _, net = await call(client, "GET", "/networks/n1", expect=200, scope="swarm")
    assert net["Id"] == nid and net["Scope"] == "swarm" and net["Driver"] == "overlay" and net["Attachable"]
    assert net["IPAM"]["Config"] == [{"Subnet": "10.9.0.0/24"}]
    status, err = await call(client, "GET", "/networks/n1", scope="local")
    assert status == 404
    status, err = await call(client, "POST", "/networks/create", {"Name": "n1", "Driver": "overlay"})
    assert status == 409 and err["message"] == "network with name n1 already exists"
    status, err = await call(client, "POST", "/networks/create", {"Name": "n2", "Driver": "bridge"})
    assert status == 400 and "NetworkCreate.Driver" in err["message"]
    status, err = await call(client, "POST", "/networks/create", {
        "Name": "n3", "IPAM": {"Config": [{"Subnet": "10.9.0.128/25"}]}})
    assert status == 400 and "overlaps" in err["message"]
    status, err = await call(client, "POST", "/networks/create", {
        "Name": "n3", "IPAM": {"Config": [{"Subnet": "10.9.1.0/33"}]}})
    assert status == 400 and err["message"] == \
        "rpc error: code = InvalidArgument desc = ipam configuration: invalid subnet 10.9.1.0/33"
    _, listed = await call(client, "GET", "/networks", filters=json.dumps(
        {"label": {"com.docker.stack.namespace=st": True}}))
    assert [n["Id"] for n in listed] == [nid]
    template = {**CLI_BODY["TaskTemplate"], "Networks": [{"Target": "n1"}]}
    await create(client, body(TaskTemplate=template))
    status, err = await call(client, "DELETE", f"/networks/{nid}")
    assert status == 400 and f"network {nid} is in use by service" in err["message"]
    _, listed = await call(client, "GET", "/networks", filters=json.dumps({"dangling": ["true"]}))
    assert listed == []
    _, listed = await call(client, "GET", "/networks", filters=json.dumps({"dangling": {"false": True}}))
    assert [n["Id"] for n in listed] == [nid]
    _, listed = await call(client, "GET", "/networks", filters=json.dumps({"driver": {"overlay": False}}))
    assert listed == []
    status, err = await call(client, "GET", "/networks", filters=json.dumps({"dangling": ["yes"]}))
    assert status == 400 and err["message"] == \
        """invalid value for filter 'dangling', must be "true" (or "1"), or "false" (or "0")"""
    await call(client, "DELETE", "/services/web", expect=200)
    assert (await client.delete("/networks/n1")).status == 204
    status, err = await call(client, "DELETE", "/networks/n1")
    assert status == 404 and err["message"] == "network n1 not found"


async def test_503_without_a_manager_store() -> None:
    for cluster, text in ((StoreCluster(None), NOT_IN_SWARM), (StoreCluster(None, worker=True), WORKER_NODE)):
        async with TestClient(TestServer(build_app(cluster))) as client:
            for method, path in (("GET", "/services"), ("GET", "/v1.47/tasks"), ("POST", "/services/create"),
                                 ("GET", "/secrets"), ("GET", "/configs/x")):
                status, err = await call(client, method, path, {} if method == "POST" else None)
                assert status == 503 and err == {"message": text}, (method, path)
