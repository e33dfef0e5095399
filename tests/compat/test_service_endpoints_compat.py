"""Service endpoints as Docker's clients see them, against the API on a unix socket with the real
allocator running: docker-py (7.x) creating services with an EndpointSpec (published ports, host
publish mode, an auto-assigned port) and reading back Spec.EndpointSpec, Endpoint.Ports and
Endpoint.VirtualIPs; Docker's errors as docker-py raises them; the docker CLI's `-p` forms,
`--publish-add/--publish-rm`, `--endpoint-mode` and the PORTS column of `docker service ls`.

docker-py is synchronous, so each block of its calls runs in a worker thread while the test's
event loop serves the app; between blocks the test waits for the allocator's write (a store
watch, not a sleep).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import docker
import pytest

from manager.allocator import ingress_network
from manager.store import Store
from model import Service
from tests.api.support import StoreCluster, add_node, allocating, build_app, new_store, serve_unix, until_service
from tests.compat.test_docker_cli_services import Docker, docker_bin  # noqa: F401  (the fixture)

RPC = "rpc error: code = InvalidArgument desc = "


def ports_of(service: Service) -> list[int]:
    return [int(p.get("PublishedPort") or 0) for p in service.endpoint.get("Ports") or []]


def create_with_endpoint_specs(host: str) -> tuple[str, str]:
    client = docker.APIClient(base_url=host, version="1.44")
    try:
        net = client.create_network("app", driver="overlay")["Id"]
        template = docker.types.TaskTemplate(docker.types.ContainerSpec("busybox", ["sleep", "1000"]),
                                             networks=["app"])
        # docker-py's test_create_service_with_endpoint_spec ports, and an auto one
        endpoint = docker.types.EndpointSpec(ports={12357: (1990, "udp"), 12562: (678,), 53243: 8080})
        endpoint["Ports"].append({"TargetPort": 80, "Protocol": "tcp"})
        web = client.create_service(template, name="web", endpoint_spec=endpoint)["ID"]
        spec_ports = client.inspect_service(web)["Spec"]["EndpointSpec"]["Ports"]
        assert sorted((p["TargetPort"], p.get("PublishedPort", 0), p["Protocol"], p["PublishMode"])
                      for p in spec_ports) == [(80, 0, "tcp", "ingress"), (678, 12562, "tcp", "ingress"),
                                               (1990, 12357, "udp", "ingress"), (8080, 53243, "tcp", "ingress")]
        # test_create_service_with_endpoint_spec_host_publish_mode
        host_mode = docker.types.EndpointSpec(ports={12358: (1990, None, "host")})
        other = client.create_service(docker.types.TaskTemplate(docker.types.ContainerSpec("busybox")),
                                      name="hosted", endpoint_spec=host_mode)["ID"]
        port = client.inspect_service(other)["Spec"]["EndpointSpec"]["Ports"][0]
        assert (port["PublishedPort"], port["TargetPort"], port["Protocol"], port["PublishMode"]) == \
            (12358, 1990, "tcp", "host")
        # Docker's refusals, as docker-py raises them
        for spec, message in (
                (docker.types.EndpointSpec(ports={12562: 80}),
                 f"port '12562' is already in use by service 'web' ({web}) as an ingress port"),
                (docker.types.EndpointSpec(ports={12358: 80}),
                 f"port '12358' is already in use by service 'hosted' ({other}) as a host-published port"),
                (docker.types.EndpointSpec(mode="dnsrr", ports={9999: 80}),
                 "EndpointSpec: port published with ingress mode can't be used with dnsrr mode")):
            with pytest.raises(docker.errors.APIError) as refused:
                client.create_service(template, name="refused", endpoint_spec=spec)
            assert refused.value.status_code == 400 and refused.value.explanation == RPC + message
        return web, net
    finally:
        client.close()


def read_endpoint(host: str, web: str, net: str, ingress_id: str) -> None:
    client = docker.DockerClient(base_url=host, version="1.44")
    try:
        service = client.services.get(web)
        endpoint = service.attrs["Endpoint"]
        assert endpoint["Spec"] == service.attrs["Spec"]["EndpointSpec"]
        assert [(p["TargetPort"], p["PublishedPort"], p["Protocol"], p["PublishMode"]) for p in endpoint["Ports"]] == \
            [(1990, 12357, "udp", "ingress"), (678, 12562, "tcp", "ingress"), (8080, 53243, "tcp", "ingress"),
             (80, 30000, "tcp", "ingress")]
        assert [v["NetworkID"] for v in endpoint["VirtualIPs"]] == [ingress_id, net]
        assert all(v["Addr"].endswith("/24") for v in endpoint["VirtualIPs"])
        # test_update_service_with_defaults_endpoint_spec: an update keeps the ports (and the auto one)
        service.update(labels={"force": "update"}, fetch_current_spec=True)
        service.reload()
        assert service.attrs["Endpoint"]["Ports"] == endpoint["Ports"]
        assert service.attrs["Endpoint"]["VirtualIPs"] == endpoint["VirtualIPs"]
    finally:
        client.close()


async def test_docker_py_endpoint_spec_and_publish_mode(tmp_path: Path) -> None:
    store = new_store()
    await add_node(store)
    ingress = ingress_network()
    await store.update(lambda tx: tx.create(ingress))
    async with serve_unix(build_app(StoreCluster(store, allocator=True), tmp_path), tmp_path / "api.sock") as host, \
            allocating(store):
        web, net = await asyncio.to_thread(create_with_endpoint_specs, host)
        await until_service(store, web, lambda s: 30000 in ports_of(s) and len(s.endpoint.get("VirtualIPs", [])) == 2)
        await asyncio.to_thread(read_endpoint, host, web, net, ingress.id)


async def test_docker_cli_publish_flags_and_the_ports_column(tmp_path: Path, docker_bin: str) -> None:  # noqa: F811
    store: Store = new_store()
    await add_node(store)
    await store.update(lambda tx: tx.create(ingress_network()))
    async with serve_unix(build_app(StoreCluster(store, allocator=True), tmp_path), tmp_path / "api.sock") as host, \
            allocating(store):
        docker_cli = Docker(docker_bin, host, tmp_path / "dockercfg")
        await docker_cli.run("service", "create", "--detach", "--no-resolve-image", "--name", "web",
                             "-p", "8080:80", "-p", "443", "-p", "9090:90/udp",
                             "--publish", "mode=host,target=81,published=8081", "busybox", "sleep", "1000")
        await until_service(store, "web", lambda s: 30000 in ports_of(s))
        _, out, _ = await docker_cli.run("service", "ls")
        header, row = out.splitlines()
        assert header.split()[-1] == "PORTS"
        assert row.split(None, 5)[5] == "*:8080->80/tcp, *:30000->443/tcp, *:9090->90/udp"
        _, out, _ = await docker_cli.run("service", "inspect", "--format", "{{json .Spec.EndpointSpec}}", "web")
        assert json.loads(out) == {"Mode": "vip", "Ports": [
            {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"},
            {"Protocol": "tcp", "TargetPort": 443, "PublishMode": "ingress"},
            {"Protocol": "udp", "TargetPort": 90, "PublishedPort": 9090, "PublishMode": "ingress"},
            {"Protocol": "tcp", "TargetPort": 81, "PublishedPort": 8081, "PublishMode": "host"}]}

        code, _, err = await docker_cli.run("service", "create", "--detach", "--no-resolve-image", "--name", "x",
                                            "-p", "8080:80", "busybox", ok=False)
        assert code == 1 and RPC + "port '8080' is already in use by service 'web'" in err
        code, _, err = await docker_cli.run("service", "create", "--detach", "--no-resolve-image", "--name", "x",
                                            "--endpoint-mode", "dnsrr", "-p", "80", "busybox", ok=False)
        assert code == 1 and "port published with ingress mode can't be used with dnsrr mode" in err

        await docker_cli.run("service", "update", "--detach", "--publish-rm", "80", "--publish-add", "7070:70",
                             "web")
        await until_service(store, "web", lambda s: 8080 not in ports_of(s) and 7070 in ports_of(s))
        _, out, _ = await docker_cli.run("service", "ls", "--format", "{{.Ports}}")
        assert out.strip() == "*:7070->70/tcp, *:30000->443/tcp, *:9090->90/udp"   # the auto port stays

        await docker_cli.run("service", "create", "--detach", "--no-resolve-image", "--name", "rr",
                             "--endpoint-mode", "dnsrr", "busybox", "sleep", "1000")
        _, out, _ = await docker_cli.run("service", "inspect", "--format", "{{json .Endpoint}}", "rr")
        endpoint: dict[str, Any] = json.loads(out)
        assert endpoint == {"Spec": {"Mode": "dnsrr"}}
