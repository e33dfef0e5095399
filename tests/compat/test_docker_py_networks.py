"""docker-py's network and service-network integration tests (docker/docker-py tests/integration:
api_network_test, api_service_test, models_services_test; ../shared/networking.md §6), ported with
their calls and assertions unchanged, against a real daemon: one lab host, the swarm initialised
on loopback by docker-py itself and force-left after each test, as docker-py's fixtures do.

What differs from docker-py's suite is only the scaffolding: the swarm is initialised per test
(docker-py's service tests share one per class, and leave networks behind when a task still uses
them; here every test starts clean), the test image is the busybox loaded into the lab, and the
local (bridge) half of test_create_inspect_network_with_scope is left out (it is in
test_docker_py_local_networks.py).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import docker
import pytest

from cli.lab import Lab
from tests.swarm.helpers import load_busybox_everywhere

TEST_IMG = "busybox:latest"
TEST_API_VERSION = None       # docker-py's default, as its suite runs without DOCKER_TEST_API_VERSION


def random_name() -> str:
    return f"dockerpytest_{random.getrandbits(64):x}"


def swarm_listen_addr() -> str:
    return f"0.0.0.0:{random.randrange(10000, 25000)}"


def force_leave_swarm(client: docker.APIClient | docker.DockerClient) -> None:
    try:
        if isinstance(client, docker.DockerClient):
            client.swarm.leave(force=True)
        else:
            client.leave_swarm(force=True)
    except docker.errors.APIError:
        pass


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from tests.conftest import needs_root

    needs_root()
    lab = Lab(f"x{os.getpid() % 100000:05d}")
    lab.down()
    try:
        lab.up(managers=1, workers=0, swarm=False)
        load_busybox_everywhere(lab, tmp_path_factory.mktemp("img"), TEST_IMG)
        yield lab
    finally:
        lab.down()


class Fixture:
    """docker-py's BaseAPIIntegrationTest, reduced to what these tests use."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.client = docker.APIClient(base_url=host, version=TEST_API_VERSION, timeout=60)
        self.tmp_networks: list[str] = []

    def from_env(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, version=TEST_API_VERSION)

    def init_swarm(self) -> str:
        return str(self.client.init_swarm("127.0.0.1", listen_addr=swarm_listen_addr()))

    def create_network(self, *args: object, **kwargs: object) -> tuple[str, str]:
        net_name = random_name()
        net_id = self.client.create_network(net_name, *args, **kwargs)["Id"]
        self.tmp_networks.append(net_id)
        return net_name, net_id

    def get_service_name(self) -> str:
        return f"dockerpytest_{random.getrandbits(64):x}"

    def update_service(self, svc_id: str, *args: object, **kwargs: object) -> None:
        """docker-py's ServiceTest._update_service: one retry on "update out of sequence"."""
        try:
            self.client.update_service(*args, **kwargs)
        except docker.errors.APIError as e:
            if e.explanation.endswith("update out of sequence"):
                version_index = self.client.inspect_service(svc_id)["Version"]["Index"]
                if len(args) > 1:
                    args = (args[0], version_index, *args[2:])
                else:
                    kwargs["version"] = version_index
                self.client.update_service(*args, **kwargs)
            else:
                raise

    def tear_down(self) -> None:
        for service in self.client.services(filters={"name": "dockerpytest_"}):
            try:
                self.client.remove_service(service["ID"])
            except docker.errors.APIError:
                pass
        for network in self.tmp_networks:
            try:
                self.client.remove_network(network)
            except docker.errors.APIError:
                pass
        force_leave_swarm(self.client)
        self.client.close()


@pytest.fixture
def t(daemon: Lab) -> Iterator[Fixture]:
    fixture = Fixture(daemon.node("manager-1").host)
    force_leave_swarm(fixture.client)
    assert fixture.init_swarm()
    try:
        yield fixture
    finally:
        fixture.tear_down()


# ---- api_network_test.py ------------------------------------------------------------------------
def test_create_network_attachable(t: Fixture) -> None:
    _, net_id = t.create_network(driver="overlay", attachable=True)
    net = t.client.inspect_network(net_id)
    assert net["Attachable"] is True


def test_create_network_ingress(t: Fixture) -> None:
    t.client.remove_network("ingress")
    _, net_id = t.create_network(driver="overlay", ingress=True)
    net = t.client.inspect_network(net_id)
    assert net["Ingress"] is True


def test_prune_networks(t: Fixture) -> None:
    net_name, _ = t.create_network()
    result = t.client.prune_networks()
    assert net_name in result["NetworksDeleted"]


def test_create_inspect_network_with_scope(t: Fixture) -> None:
    net_name_swarm, _ = t.create_network(driver="overlay", scope="swarm")

    assert t.client.inspect_network(net_name_swarm)
    assert t.client.inspect_network(net_name_swarm, scope="swarm")
    with pytest.raises(docker.errors.NotFound):
        t.client.inspect_network(net_name_swarm, scope="local")


# ---- api_service_test.py ------------------------------------------------------------------------
def test_create_service_with_custom_networks(t: Fixture) -> None:
    net1 = t.client.create_network("dockerpytest_1", driver="overlay", ipam={"Driver": "default"})
    t.tmp_networks.append(net1["Id"])
    net2 = t.client.create_network("dockerpytest_2", driver="overlay", ipam={"Driver": "default"})
    t.tmp_networks.append(net2["Id"])
    container_spec = docker.types.ContainerSpec(TEST_IMG, ["true"])
    task_tmpl = docker.types.TaskTemplate(container_spec, networks=["dockerpytest_1", {"Target": "dockerpytest_2"}])
    name = t.get_service_name()
    svc_id = t.client.create_service(task_tmpl, name=name)
    svc_info = t.client.inspect_service(svc_id)
    assert "Networks" in svc_info["Spec"]["TaskTemplate"]
    assert svc_info["Spec"]["TaskTemplate"]["Networks"] == [{"Target": net1["Id"]}, {"Target": net2["Id"]}]


def test_create_service_with_network_attachment_config(t: Fixture) -> None:
    network = t.client.create_network("dockerpytest_1", driver="overlay", ipam={"Driver": "default"})
    t.tmp_networks.append(network["Id"])
    container_spec = docker.types.ContainerSpec(TEST_IMG, ["true"])
    network_config = docker.types.NetworkAttachmentConfig(
        target="dockerpytest_1", aliases=["dockerpytest_1_alias"], options={"foo": "bar"})
    task_tmpl = docker.types.TaskTemplate(container_spec, networks=[network_config])
    name = t.get_service_name()
    svc_id = t.client.create_service(task_tmpl, name=name)
    svc_info = t.client.inspect_service(svc_id)
    assert "Networks" in svc_info["Spec"]["TaskTemplate"]
    service_networks_info = svc_info["Spec"]["TaskTemplate"]["Networks"]
    assert len(service_networks_info) == 1
    assert service_networks_info[0]["Target"] == network["Id"]
    assert service_networks_info[0]["Aliases"] == ["dockerpytest_1_alias"]
    assert service_networks_info[0]["DriverOpts"] == {"foo": "bar"}


def _check_ports(ports: list[dict[str, object]]) -> None:
    for port in ports:
        if port["PublishedPort"] == 12562:
            assert port["TargetPort"] == 678
            assert port["Protocol"] == "tcp"
        elif port["PublishedPort"] == 53243:
            assert port["TargetPort"] == 8080
            assert port["Protocol"] == "tcp"
        elif port["PublishedPort"] == 12357:
            assert port["TargetPort"] == 1990
            assert port["Protocol"] == "udp"
        else:
            pytest.fail(f"Invalid port specification: {port}")
    assert len(ports) == 3


def test_create_service_with_endpoint_spec(t: Fixture) -> None:
    container_spec = docker.types.ContainerSpec(TEST_IMG, ["true"])
    task_tmpl = docker.types.TaskTemplate(container_spec)
    name = t.get_service_name()
    endpoint_spec = docker.types.EndpointSpec(ports={12357: (1990, "udp"), 12562: (678,), 53243: 8080})
    svc_id = t.client.create_service(task_tmpl, name=name, endpoint_spec=endpoint_spec)
    svc_info = t.client.inspect_service(svc_id)
    _check_ports(svc_info["Spec"]["EndpointSpec"]["Ports"])


def test_create_service_with_endpoint_spec_host_publish_mode(t: Fixture) -> None:
    container_spec = docker.types.ContainerSpec(TEST_IMG, ["true"])
    task_tmpl = docker.types.TaskTemplate(container_spec)
    name = t.get_service_name()
    endpoint_spec = docker.types.EndpointSpec(ports={12357: (1990, None, "host")})
    svc_id = t.client.create_service(task_tmpl, name=name, endpoint_spec=endpoint_spec)
    svc_info = t.client.inspect_service(svc_id)
    ports = svc_info["Spec"]["EndpointSpec"]["Ports"]
    assert len(ports) == 1
    port = ports[0]
    assert port["PublishedPort"] == 12357
    assert port["TargetPort"] == 1990
    assert port["Protocol"] == "tcp"
    assert port["PublishMode"] == "host"


def test_update_service_with_defaults_networks(t: Fixture) -> None:
    net1 = t.client.create_network("dockerpytest_1", driver="overlay", ipam={"Driver": "default"})
    t.tmp_networks.append(net1["Id"])
    net2 = t.client.create_network("dockerpytest_2", driver="overlay", ipam={"Driver": "default"})
    t.tmp_networks.append(net2["Id"])
    container_spec = docker.types.ContainerSpec(TEST_IMG, ["true"])
    task_tmpl = docker.types.TaskTemplate(container_spec, networks=["dockerpytest_1", {"Target": "dockerpytest_2"}])
    name = t.get_service_name()
    svc_id = t.client.create_service(task_tmpl, name=name)
    svc_info = t.client.inspect_service(svc_id)
    assert "Networks" in svc_info["Spec"]["TaskTemplate"]
    assert svc_info["Spec"]["TaskTemplate"]["Networks"] == [{"Target": net1["Id"]}, {"Target": net2["Id"]}]

    version_index = svc_info["Version"]["Index"]
    t.update_service(svc_id, name, version_index, labels={"force": "update"}, fetch_current_spec=True)
    svc_info = t.client.inspect_service(svc_id)
    new_index = svc_info["Version"]["Index"]
    assert new_index > version_index
    assert "Networks" in svc_info["Spec"]["TaskTemplate"]
    assert svc_info["Spec"]["TaskTemplate"]["Networks"] == [{"Target": net1["Id"]}, {"Target": net2["Id"]}]

    task_tmpl = docker.types.TaskTemplate(container_spec, networks=[net1["Id"]])
    t.update_service(svc_id, name, new_index, task_tmpl, fetch_current_spec=True)
    svc_info = t.client.inspect_service(svc_id)
    assert "Networks" in svc_info["Spec"]["TaskTemplate"]
    assert svc_info["Spec"]["TaskTemplate"]["Networks"] == [{"Target": net1["Id"]}]


def test_update_service_with_defaults_endpoint_spec(t: Fixture) -> None:
    container_spec = docker.types.ContainerSpec(TEST_IMG, ["true"])
    task_tmpl = docker.types.TaskTemplate(container_spec)
    name = t.get_service_name()
    endpoint_spec = docker.types.EndpointSpec(ports={12357: (1990, "udp"), 12562: (678,), 53243: 8080})
    svc_id = t.client.create_service(task_tmpl, name=name, endpoint_spec=endpoint_spec)
    svc_info = t.client.inspect_service(svc_id)
    _check_ports(svc_info["Spec"]["EndpointSpec"]["Ports"])

    svc_info = t.client.inspect_service(svc_id)
    version_index = svc_info["Version"]["Index"]
    t.update_service(svc_id, name, version_index, labels={"force": "update"}, fetch_current_spec=True)
    svc_info = t.client.inspect_service(svc_id)
    new_index = svc_info["Version"]["Index"]
    assert new_index > version_index
    _check_ports(svc_info["Spec"]["EndpointSpec"]["Ports"])


def test_update_service_with_network_change(t: Fixture) -> None:
    container_spec = docker.types.ContainerSpec("busybox", ["echo", "hello"])
    net1 = t.client.create_network(t.get_service_name(), driver="overlay", ipam={"Driver": "default"})
    t.tmp_networks.append(net1["Id"])
    net2 = t.client.create_network(t.get_service_name(), driver="overlay", ipam={"Driver": "default"})
    t.tmp_networks.append(net2["Id"])
    task_tmpl = docker.types.TaskTemplate(container_spec, networks=[net1["Id"]])
    name = t.get_service_name()
    svc_id = t.client.create_service(task_tmpl, name=name)
    svc_info = t.client.inspect_service(svc_id)
    assert "Networks" in svc_info["Spec"]["TaskTemplate"]
    assert len(svc_info["Spec"]["TaskTemplate"]["Networks"]) > 0
    assert svc_info["Spec"]["TaskTemplate"]["Networks"][0]["Target"] == net1["Id"]

    svc_info = t.client.inspect_service(svc_id)
    version_index = svc_info["Version"]["Index"]
    task_tmpl = docker.types.TaskTemplate(container_spec, networks=[net2["Id"]])
    t.update_service(svc_id, name, version_index, task_tmpl, name=name, fetch_current_spec=True)
    svc_info = t.client.inspect_service(svc_id)
    task_template = svc_info["Spec"]["TaskTemplate"]
    assert "Networks" in task_template
    assert len(task_template["Networks"]) > 0
    assert task_template["Networks"][0]["Target"] == net2["Id"]

    svc_info = t.client.inspect_service(svc_id)
    new_index = svc_info["Version"]["Index"]
    assert new_index > version_index
    task_tmpl = docker.types.TaskTemplate(container_spec, networks=[net1["Id"]])
    t.update_service(svc_id, name, new_index, task_tmpl, name=name, fetch_current_spec=True)
    svc_info = t.client.inspect_service(svc_id)
    task_template = svc_info["Spec"]["TaskTemplate"]
    assert "ContainerSpec" in task_template
    new_spec = task_template["ContainerSpec"]
    assert "Image" in new_spec
    assert new_spec["Image"].split(":")[0] == "busybox"
    assert "Command" in new_spec
    assert new_spec["Command"] == ["echo", "hello"]
    assert "Networks" in task_template
    assert len(task_template["Networks"]) > 0
    assert task_template["Networks"][0]["Target"] == net1["Id"]

    svc_info = t.client.inspect_service(svc_id)
    new_index = svc_info["Version"]["Index"]
    task_tmpl = docker.types.TaskTemplate(container_spec, networks=[net2["Id"]])
    t.update_service(svc_id, name, new_index, task_tmpl, name=name, fetch_current_spec=True)
    svc_info = t.client.inspect_service(svc_id)
    task_template = svc_info["Spec"]["TaskTemplate"]
    assert "Networks" in task_template
    assert len(task_template["Networks"]) > 0
    assert task_template["Networks"][0]["Target"] == net2["Id"]


# ---- models_services_test.py --------------------------------------------------------------------
def test_create_with_network(t: Fixture) -> None:
    client = t.from_env()
    name = random_name()
    network = client.networks.create(random_name(), driver="overlay")
    service = client.services.create(
        # create arguments
        name=name,
        # ContainerSpec arguments
        image=TEST_IMG,
        command="sleep 300",
        networks=[network.id],
    )
    assert "Networks" in service.attrs["Spec"]["TaskTemplate"]
    networks = service.attrs["Spec"]["TaskTemplate"]["Networks"]
    assert len(networks) == 1
    assert networks[0]["Target"] == network.id


def test_update_retains_networks(t: Fixture) -> None:
    client = t.from_env()
    network_name = random_name()
    network = client.networks.create(network_name, driver="overlay")
    service = client.services.create(
        # create arguments
        name=random_name(),
        networks=[network.id],
        # ContainerSpec arguments
        image=TEST_IMG,
        command="sleep 300",
    )
    service.reload()
    service.update(
        # create argument
        name=service.name,
        # ContainerSpec argument
        command="sleep 600",
    )
    service.reload()
    networks = service.attrs["Spec"]["TaskTemplate"]["Networks"]
    assert networks == [{"Target": network.id}]

