"""docker-py (7.x) against a one-node swarm, the way docker-py's own `api_service_test.py` checks a
service's secrets and configs: find the service's container with `containers(filters={"name":
[service]}, quiet=True)` (its `get_service_container`), then `exec_create`/`exec_start` a `cat`
inside it; plus the container's logs and inspect as docker-py reads them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from docker import types

from cli.lab import Lab
from tests.swarm.helpers import eventually, load_busybox_everywhere


def test_docker_py_reads_a_service_secret_and_config_from_inside_its_container(
        make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = make_lab(managers=1, workers=0, swarm=True)
    load_busybox_everywhere(lab, tmp_path)
    client = docker.APIClient(base_url=lab.node("manager-1").host, version="1.44")
    try:
        secret_data, config_data = b"phantasmagoria of flower view", b"sakuya izayoi"
        secret_id = client.create_secret("favorite_touhou", secret_data)["ID"]
        config_id = client.create_config("favorite_character", config_data)["ID"]
        spec = types.ContainerSpec(
            "busybox:latest", ["sh", "-c", "echo service-log-line; sleep 999"],
            secrets=[types.SecretReference(secret_id, "favorite_touhou")],
            configs=[types.ConfigReference(config_id, "favorite_character")])
        client.create_service(types.TaskTemplate(spec), name="touhou")

        def service_container() -> Any:
            found = client.containers(filters={"name": ["touhou"]}, quiet=True)
            return found[0] if found else None

        container = eventually(service_container, timeout=60, what="the service's container")
        assert set(container) == {"Id"}
        exec_id = client.exec_create(container, "cat /run/secrets/favorite_touhou")
        assert client.exec_start(exec_id) == secret_data
        assert client.exec_inspect(exec_id)["ExitCode"] == 0
        exec_id = client.exec_create(container, "cat /favorite_character")
        assert client.exec_start(exec_id) == config_data

        eventually(lambda: client.logs(container) == b"service-log-line\n", what="the container's log")
        inspected = client.inspect_container(container)
        assert inspected["Config"]["Labels"]["com.docker.swarm.service.name"] == "touhou"
        assert inspected["Name"].startswith("/touhou.1.") and inspected["State"]["Status"] == "running"
        listed = client.containers(filters={"label": "com.docker.swarm.service.name=touhou"})
        assert [c["Id"] for c in listed] == [container["Id"]] and listed[0]["State"] == "running"
    finally:
        client.close()
