"""docker-py (7.x) against the service, secret, config and network API on a unix socket.

docker-py is synchronous, so each block of calls runs in a worker thread while the test's
event loop keeps serving the app.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import docker
import pytest
from docker import types

from tests.api.support import StoreCluster, add_node, build_app, new_store, serve_unix


def exercise(host: str) -> None:
    client = docker.DockerClient(base_url=host, version="1.44")
    try:
        net = client.networks.create("backend", driver="overlay", attachable=True)
        assert client.networks.get(net.id).attrs["Driver"] == "overlay"
        secret = client.secrets.create(name="pw", data=b"hunter2", labels={"a": "1"})
        assert "Data" not in client.secrets.get(secret.id).attrs["Spec"]
        config = client.configs.create(name="cfg", data=b"port=80")
        assert client.configs.get(config.id).name == "cfg"

        service = client.services.create(
            "busybox", ["sleep", "1000"], name="web", networks=["backend"],
            mode=types.ServiceMode("replicated", replicas=2),
            secrets=[types.SecretReference(secret.id, "pw")],
            restart_policy=types.RestartPolicy(condition="on-failure", delay=1_000_000_000, max_attempts=3),
            labels={"tier": "front"}, env=["A=1"])
        service.reload()
        spec = service.attrs["Spec"]
        assert spec["TaskTemplate"]["RestartPolicy"] == {"Condition": "on-failure", "Delay": 1_000_000_000,
                                                         "MaxAttempts": 3, "Window": 0}
        assert spec["TaskTemplate"]["Networks"] == [{"Target": net.id}]
        assert "RollbackConfig" not in spec
        assert client.services.list(filters={"label": "tier=front"})[0].id == service.id
        assert client.services.list(filters={"name": "nomatch"}) == []

        service.update(env=["A=2"], force_update=True)
        service.reload()
        assert service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["A=2"]
        assert service.attrs["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["A=1"]
        assert service.scale(4)
        service.reload()
        assert service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 4
        assert service.tasks() == []

        with pytest.raises(docker.errors.APIError) as conflict:
            client.services.create("busybox", name="web")
        assert conflict.value.status_code == 409
        with pytest.raises(docker.errors.APIError) as in_use:
            secret.remove()
        assert in_use.value.status_code == 400 and "is in use by the following service: web" in str(in_use.value)
        with pytest.raises(docker.errors.NotFound):
            client.services.get("nosuch")

        inspected = client.api.inspect_service(service.id, insert_defaults=True)
        assert inspected["Spec"]["RollbackConfig"]["Order"] == "stop-first"
        service.remove()
        secret.remove()
        config.remove()
        net.remove()
        assert client.networks.list() == [] and client.services.list() == []
    finally:
        client.close()


async def test_docker_py_services_secrets_configs_networks(tmp_path: Path) -> None:
    store = new_store()
    await add_node(store)
    async with serve_unix(build_app(StoreCluster(store), tmp_path), tmp_path / "api.sock") as host:
        await asyncio.to_thread(exercise, host)
