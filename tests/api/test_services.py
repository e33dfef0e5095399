"""Service endpoints: create/inspect/update/rollback/rm, versions, names, specs, filters, defaults."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from aiohttp.test_utils import TestClient

from manager.specs import normalize_service_spec
from manager.store import Store, WriteTx
from model import Service, Task, TaskState, TaskStatus, new_id
from tests.api.support import call

CLI_BODY: dict[str, Any] = {
    "Name": "web", "Labels": {},
    "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "1000"], "Init": False,
                                       "DNSConfig": {}},
                     "Resources": {"Limits": {}, "Reservations": {}}, "Placement": {}, "ForceUpdate": 0},
    "Mode": {"Replicated": {"Replicas": 2}}, "EndpointSpec": {"Mode": "vip"},
}


def body(**changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(CLI_BODY))
    out.update(changes)
    return out


async def create(client: TestClient, spec: dict[str, Any] | None = None) -> str:
    _, created = await call(client, "POST", "/v1.47/services/create", spec or body(), expect=201)
    assert set(created) == {"ID", "Warnings"}
    return str(created["ID"])


async def test_create_stores_normalised_spec_and_endpoint(client: TestClient) -> None:
    sid = await create(client)
    _, svc = await call(client, "GET", f"/v1.47/services/{sid}", expect=200, insertDefaults="false")
    spec = svc["Spec"]
    assert spec["Mode"] == {"Replicated": {"Replicas": 2}}
    assert spec["TaskTemplate"]["Runtime"] == "container"
    assert spec["TaskTemplate"]["ContainerSpec"]["Isolation"] == "default"
    assert svc["Endpoint"] == {"Spec": {"Mode": "vip"}}
    assert "PreviousSpec" not in svc and "UpdateStatus" not in svc
    assert "RollbackConfig" not in spec
    assert svc["Version"]["Index"] > 0 and svc["CreatedAt"].endswith("Z")


async def test_create_without_replicas_stores_one(client: TestClient) -> None:
    sid = await create(client, body(Mode={"Replicated": {}}))
    _, svc = await call(client, "GET", f"/services/{sid}")
    assert svc["Spec"]["Mode"] == {"Replicated": {"Replicas": 1}}


async def test_insert_defaults_adds_policies(client: TestClient) -> None:
    sid = await create(client)
    _, svc = await call(client, "GET", f"/services/{sid}", insertDefaults="true")
    spec = svc["Spec"]
    assert spec["RollbackConfig"]["FailureAction"] == "pause"
    assert spec["UpdateConfig"]["Monitor"] == 5_000_000_000
    assert spec["TaskTemplate"]["RestartPolicy"] == {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0}
    assert spec["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 10_000_000_000
    status, err = await call(client, "GET", f"/services/{sid}", insertDefaults="maybe")
    assert status == 400 and "insertDefaults" in err["message"]


async def test_name_conflict_is_409(client: TestClient) -> None:
    await create(client)
    status, err = await call(client, "POST", "/services/create", body(Name="WEB"))
    assert status == 409
    assert err["message"] == ("rpc error: code = AlreadyExists desc = name conflicts with an existing object: "
                              "service WEB already exists")


async def test_bad_specs_are_400_naming_the_field(client: TestClient) -> None:
    cases = [
        (body(Mode={"Sideways": {}}), "Mode"),
        (body(Mode={"Replicated": {"Replicas": -1}}), "Mode.Replicated.Replicas"),
        (body(Bogus=1), "ServiceSpec.Bogus"),
        (body(TaskTemplate={**CLI_BODY["TaskTemplate"], "Placement": {"Constraints": ["node.role=manager"]}}),
         "TaskTemplate.Placement.Constraints"),
        (body(TaskTemplate={**CLI_BODY["TaskTemplate"], "RestartPolicy": {"Delay": "5s"}}),
         "TaskTemplate.RestartPolicy.Delay"),
        (body(TaskTemplate={"ContainerSpec": {}}), "TaskTemplate.ContainerSpec.Image"),
    ]
    for spec, field in cases:
        status, err = await call(client, "POST", "/services/create", spec)
        assert status == 400, (field, err)
        assert field in err["message"], (field, err)
    status, err = await call(client, "POST", "/services/create", ["not", "an", "object"])
    assert status == 400


async def test_unknown_network_is_404_and_names_resolve_to_ids(client: TestClient) -> None:
    spec = body(TaskTemplate={**CLI_BODY["TaskTemplate"], "Networks": [{"Target": "back"}]})
    status, err = await call(client, "POST", "/services/create", spec)
    assert status == 404 and err["message"] == "network back not found"
    _, net = await call(client, "POST", "/networks/create", {"Name": "back", "Driver": "overlay"}, expect=201)
    sid = await create(client, spec)
    _, svc = await call(client, "GET", f"/services/{sid}")
    assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": net["Id"]}]


async def test_update_keeps_previous_spec_and_checks_version(client: TestClient) -> None:
    sid = await create(client)
    _, svc = await call(client, "GET", f"/services/{sid}")
    version = svc["Version"]["Index"]
    new = svc["Spec"]
    new["TaskTemplate"]["ContainerSpec"]["Env"] = ["A=1"]
    _, out = await call(client, "POST", f"/v1.47/services/{sid}/update", new, expect=200, version=version,
                        registryAuthFrom="spec")
    assert out == {"Warnings": None}
    _, updated = await call(client, "GET", f"/services/{sid}")
    assert updated["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["A=1"]
    assert "Env" not in updated["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]
    assert updated["Version"]["Index"] > version
    # the old version is now stale
    status, err = await call(client, "POST", f"/services/{sid}/update", new, version=version)
    assert status == 500 and err["message"] == "rpc error: code = Unknown desc = update out of sequence"
    # no version at all
    status, err = await call(client, "POST", f"/services/{sid}/update", new)
    assert status == 400 and err["message"].startswith("invalid service version ''")


async def test_update_rejects_rename_and_mode_change(client: TestClient) -> None:
    sid = await create(client)
    _, svc = await call(client, "GET", f"/services/{sid}")
    version = svc["Version"]["Index"]
    status, err = await call(client, "POST", f"/services/{sid}/update", body(Name="other"), version=version)
    assert status == 400 and "renaming services is not supported" in err["message"]
    status, err = await call(client, "POST", f"/services/{sid}/update", body(Mode={"Global": {}}), version=version)
    assert status == 400 and "service mode change is not allowed" in err["message"]


async def test_rollback_swaps_specs_and_marks_status(client: TestClient) -> None:
    sid = await create(client)
    _, svc = await call(client, "GET", f"/services/{sid}")
    status, err = await call(client, "POST", f"/services/{sid}/update", svc["Spec"],
                             version=svc["Version"]["Index"], rollback="previous")
    assert status == 400 and err["message"].endswith(f"service {sid} does not have a previous spec")
    await call(client, "POST", f"/services/{sid}/update", body(Mode={"Replicated": {"Replicas": 5}}),
               expect=200, version=svc["Version"]["Index"])
    _, svc = await call(client, "GET", "/services/web")
    assert svc["Spec"]["Mode"]["Replicated"]["Replicas"] == 5
    await call(client, "POST", f"/services/{sid}/update", svc["Spec"], expect=200,
               version=svc["Version"]["Index"], rollback="previous")
    _, back = await call(client, "GET", f"/services/{sid}")
    assert back["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
    assert back["PreviousSpec"]["Mode"]["Replicated"]["Replicas"] == 5
    assert back["UpdateStatus"]["State"] == "rollback_started"
    assert back["UpdateStatus"]["Message"] == "manually requested rollback"


async def test_remove_marks_tasks_for_removal(client: TestClient, store: Store) -> None:
    sid = await create(client)
    task = Task(id=new_id(), service_id=sid, slot=1, spec=CLI_BODY["TaskTemplate"],
                status=TaskStatus(TaskState.RUNNING, "2026-01-01T00:00:00.000000000Z"))
    await store.update(lambda tx: tx.create(task))
    resp = await client.delete("/v1.47/services/web")
    assert resp.status == 200 and await resp.read() == b""
    assert store.view(lambda tx: tx.get("services", sid)) is None
    assert store.view(lambda tx: tx.get("tasks", task.id)).desired_state == TaskState.REMOVE
    status, err = await call(client, "DELETE", "/services/web")
    assert status == 404 and err["message"] == "service web not found"


async def test_lookup_by_prefix_and_ambiguity(client: TestClient, store: Store) -> None:
    sid = await create(client)
    _, svc = await call(client, "GET", f"/services/{sid[:6]}", expect=200)
    assert svc["ID"] == sid
    for suffix in "12":
        twin = Service(id="zz" + "0" * 22 + suffix, spec=normalize_service_spec(body(Name=f"twin{suffix}")))
        await store.update(partial(WriteTx.create, obj=twin))
    status, err = await call(client, "GET", "/services/zz00")
    assert status == 400 and err["message"] == "service zz00 is ambiguous (2 matches found)"


async def test_list_filters_both_forms_and_status(client: TestClient, store: Store) -> None:
    sid = await create(client, body(Labels={"tier": "front"}))
    await create(client, body(Name="db", Mode={"Global": {}}))
    running = Task(id=new_id(), service_id=sid, slot=1, spec=CLI_BODY["TaskTemplate"],
                   status=TaskStatus(TaskState.RUNNING, "2026-01-01T00:00:00.000000000Z"))
    await store.update(lambda tx: tx.create(running))

    async def names(filters: Any, **extra: Any) -> list[str]:
        _, out = await call(client, "GET", "/services", expect=200, filters=json.dumps(filters), **extra)
        return sorted(s["Spec"]["Name"] for s in out)

    assert await names({"name": {"we": True}}) == ["web"]
    assert await names({"name": ["d"]}) == ["db"]
    assert await names({"label": ["tier=front"]}) == ["web"]
    assert await names({"label": {"tier=back": True}}) == []
    assert await names({"mode": ["global"]}) == ["db"]
    assert await names({"id": [sid[:5]]}) == ["web"]
    # dockerd: `name` is read with Get (a value mapped to false still selects), `mode` with
    # ExactMatch (a false value matches nothing, and the key still filters)
    assert await names({"name": {"we": False}}) == ["web"]
    assert await names({"mode": {"global": False}}) == []
    assert await names({"mode": {"global": False, "replicated": True}}) == ["web"]
    status, err = await call(client, "GET", "/services", filters=json.dumps({"bogus": ["x"]}))
    assert status == 400 and err["message"] == "invalid filter 'bogus'"
    for raw in ("{", '{"name": "web"}', '{"name": ["web"], "mode": {"global": true}}', "[]"):
        status, err = await call(client, "GET", "/services", filters=raw)
        assert (status, err["message"]) == (400, "invalid filter"), raw
    _, out = await call(client, "GET", "/services", status="true", filters=json.dumps({"name": ["web"]}))
    assert out[0]["ServiceStatus"] == {"RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 0}
    _, out = await call(client, "GET", "/services")
    assert "ServiceStatus" not in out[0]


async def test_secret_references_resolve_by_name(client: TestClient) -> None:
    _, sec = await call(client, "POST", "/secrets/create", {"Name": "s", "Data": "aGk="}, expect=201)
    template = {**CLI_BODY["TaskTemplate"],
                "ContainerSpec": {"Image": "busybox", "Secrets": [{"SecretName": "s", "File": {"Name": "s"}}]}}
    sid = await create(client, body(TaskTemplate=template))
    _, svc = await call(client, "GET", f"/services/{sid}")
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretID"] == sec["ID"]
    bad = {**template, "ContainerSpec": {"Image": "busybox", "Secrets": [{"SecretID": "nope"}]}}
    status, err = await call(client, "POST", "/services/create", body(Name="x", TaskTemplate=bad))
    assert status == 400 and "secret not found" in err["message"]
