"""Keys of request bodies match whatever their case, as dockerd's Go decoder matches them
(engineapi/bodykeys.py): docker-py's models_services_test::test_create sends
`"RollbackConfig": {"order": "start-first"}` and expects `Order` back."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engineapi.bodykeys import (
    CONTAINER_CREATE,
    NETWORK_CONNECT,
    SERVICE_SPEC,
    SWARM_INIT,
    MapOf,
    Obj,
    canonical_keys,
    obj,
)
from engineapi.http import Routes, new_app
from manager.store import Store
from tests.api.support import NODE_ID, add_node, call
from worker.executor.api import add_routes as add_volume_routes
from worker.executor.volumes import VolumeStore

DOCKER_PY_CREATE: dict[str, Any] = {   # what docker-py's client.services.create(...) of test_create sends
    "Name": "dpy-create", "Labels": {"foo": "bar"},
    "TaskTemplate": {"ContainerSpec": {"Image": "alpine", "Command": ["sleep", "300"],
                                       "Labels": {"container": "label"}}},
    "RollbackConfig": {"order": "start-first"},
}


def test_a_lower_case_key_gets_dockers_spelling() -> None:
    assert canonical_keys(DOCKER_PY_CREATE, SERVICE_SPEC)["RollbackConfig"] == {"Order": "start-first"}


def test_every_level_of_a_service_spec_matches_any_case() -> None:
    body = {"name": "web", "TASKTEMPLATE": {"containerSpec": {"image": "busybox", "tty": True,
                                                               "healthcheck": {"test": ["NONE"]},
                                                               "mounts": [{"type": "tmpfs", "target": "/t"}]},
                                             "restartpolicy": {"condition": "none"}},
            "mode": {"replicated": {"replicas": 2}},
            "endpointspec": {"ports": [{"targetport": 80, "publishedport": 8080}]}}
    assert canonical_keys(body, SERVICE_SPEC) == {
        "Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "TTY": True,
                                                          "Healthcheck": {"Test": ["NONE"]},
                                                          "Mounts": [{"Type": "tmpfs", "Target": "/t"}]},
                                        "RestartPolicy": {"Condition": "none"}},
        "Mode": {"Replicated": {"Replicas": 2}},
        "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]}}


def test_user_keys_and_unknown_keys_stay_as_sent() -> None:
    body = {"labels": {"order": "x", "Name": "y"},
            "TaskTemplate": {"ContainerSpec": {"Image": "a", "sysctls": {"net.ipv4.ip_forward": "1"}},
                             "networks": [{"target": "n", "driveropts": {"mtu": "1"}}]},
            "NoSuchKey": 1, "nosuchkey": 2}
    out = canonical_keys(body, SERVICE_SPEC)
    assert out["Labels"] == {"order": "x", "Name": "y"}
    assert out["TaskTemplate"]["ContainerSpec"]["Sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert out["TaskTemplate"]["Networks"] == [{"Target": "n", "DriverOpts": {"mtu": "1"}}]
    assert out["NoSuchKey"] == 1 and out["nosuchkey"] == 2


def test_the_later_spelling_wins_as_in_go() -> None:
    assert canonical_keys({"Order": "stop-first", "order": "start-first"}, obj(Order=None)) == {"Order": "start-first"}
    assert canonical_keys({"order": "start-first", "Order": "stop-first"}, obj(Order=None)) == {"Order": "stop-first"}


def test_values_of_another_type_are_left_to_the_validators() -> None:
    assert canonical_keys({"spec": "text", "listenaddr": ["x"]}, SWARM_INIT) == {"Spec": "text", "ListenAddr": ["x"]}
    assert canonical_keys([{"name": 1}], SERVICE_SPEC) == [{"name": 1}]
    assert canonical_keys({"labels": ["a"]}, obj(Labels=MapOf())) == {"Labels": ["a"]}


def test_a_shape_cannot_hold_two_spellings_of_one_key() -> None:
    with pytest.raises(ValueError, match="differ only in case"):
        Obj({"Tty": None, "TTY": None})


async def test_docker_py_create_with_a_lower_case_rollback_order(client: TestClient) -> None:
    _, created = await call(client, "POST", "/v1.47/services/create", DOCKER_PY_CREATE, expect=201)
    _, svc = await call(client, "GET", f"/v1.47/services/{created['ID']}", expect=200)
    assert svc["Spec"]["RollbackConfig"] == {"Order": "start-first"}
    assert svc["Spec"]["Labels"] == {"foo": "bar"}
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Labels"] == {"container": "label"}


async def test_a_service_update_in_lower_case(client: TestClient) -> None:
    _, created = await call(client, "POST", "/services/create", DOCKER_PY_CREATE, expect=201)
    _, svc = await call(client, "GET", f"/services/{created['ID']}", expect=200)
    update = {"name": "dpy-create", "tasktemplate": {"containerspec": {"image": "alpine"}},
              "updateconfig": {"parallelism": 2, "failureaction": "continue"}}
    await call(client, "POST", f"/services/{created['ID']}/update", update, expect=200,
               version=str(svc["Version"]["Index"]))
    _, svc = await call(client, "GET", f"/services/{created['ID']}", expect=200)
    assert svc["Spec"]["UpdateConfig"] == {"Parallelism": 2, "FailureAction": "continue"}


async def test_a_misspelt_key_is_still_refused_with_its_name(client: TestClient) -> None:
    status, err = await call(client, "POST", "/services/create", {**DOCKER_PY_CREATE, "RollbackConfig": {"ordre": "x"}})
    assert status == 400 and "RollbackConfig.ordre" in err["message"]


async def test_network_secret_and_config_bodies_in_lower_case(client: TestClient) -> None:
    _, net = await call(client, "POST", "/networks/create", {"name": "lower-net", "driver": "overlay",
                                                              "labels": {"Keep": "Case"}}, expect=201)
    _, shown = await call(client, "GET", f"/networks/{net['Id']}", expect=200)
    assert shown["Name"] == "lower-net" and shown["Labels"] == {"Keep": "Case"}
    data = base64.b64encode(b"s3cret").decode()
    for kind in ("secrets", "configs"):
        _, made = await call(client, "POST", f"/{kind}/create", {"NAME": f"lower-{kind}", "data": data}, expect=201)
        _, shown = await call(client, "GET", f"/{kind}/{made['ID']}", expect=200)
        assert shown["Spec"]["Name"] == f"lower-{kind}"


async def test_a_node_update_in_lower_case(client: TestClient, store: Store) -> None:
    await add_node(store)
    _, node = await call(client, "GET", f"/nodes/{NODE_ID}", expect=200)
    await call(client, "POST", f"/nodes/{NODE_ID}/update", {"availability": "drain", "role": "manager",
                                                           "labels": {"Zone": "a"}},
               expect=200, version=str(node["Version"]["Index"]))
    _, node = await call(client, "GET", f"/nodes/{NODE_ID}", expect=200)
    assert node["Spec"] == {"Labels": {"Zone": "a"}, "Role": "manager", "Availability": "drain"}


async def test_a_volume_create_in_lower_case(tmp_path: Path) -> None:
    app = new_app()
    add_volume_routes(Routes(app), VolumeStore(tmp_path / "volumes"))
    async with TestClient(TestServer(app)) as volumes:
        _, made = await call(volumes, "POST", "/volumes/create",
                             {"name": "lower-vol", "labels": {"Keep": "Case"}, "driveropts": {}}, expect=201)
        assert made["Name"] == "lower-vol" and made["Labels"] == {"Keep": "Case"}
        status, err = await call(volumes, "POST", "/volumes/create", {"name": "v2", "labels": {"a": {}}})
        assert status == 400 and "Labels" in err["message"]


def test_a_container_create_and_a_network_connect_in_any_case() -> None:
    body = {"image": "busybox", "TTY": True, "cmd": ["sh"], "labels": {"Keep": "Case"},
            "hostconfig": {"portbindings": {"80/tcp": [{"hostport": "8080"}]}, "restartpolicy": {"name": "always"}},
            "networkingconfig": {"endpointsconfig": {"MyNet": {"aliases": ["a"], "ipamconfig": {"ipv4address": "x"}}}}}
    assert canonical_keys(body, CONTAINER_CREATE) == {
        "Image": "busybox", "Tty": True, "Cmd": ["sh"], "Labels": {"Keep": "Case"},
        "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}, "RestartPolicy": {"Name": "always"}},
        "NetworkingConfig": {"EndpointsConfig": {"MyNet": {"Aliases": ["a"], "IPAMConfig": {"IPv4Address": "x"}}}}}
    assert canonical_keys({"container": "c", "endpointconfig": {"aliases": ["x"]}}, NETWORK_CONNECT) == {
        "Container": "c", "EndpointConfig": {"Aliases": ["x"]}}
