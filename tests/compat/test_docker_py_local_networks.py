"""docker-py's api_network_test.py, the local (bridge) network tests, ported with their calls and
assertions unchanged, against a real daemon on one lab host (its own network namespace), outside
any swarm, as docker-py runs them against a fresh dockerd.

Not ported, and why:
  - test_create_check_duplicate: it expects a duplicate name to be accepted with
    check_duplicate=False, which dockerd refuses too since API 1.44 (docker-py's default version);
  - the swarm tests of the file (attachable, ingress, scope) are in test_docker_py_networks.py;
    the local half of test_create_inspect_network_with_scope is here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest
from docker.types import IPAMConfig, IPAMPool

from cli.lab import Lab
from tests.compat.test_docker_py_networks import TEST_API_VERSION, TEST_IMG, daemon, random_name  # noqa: F401

BUSYBOX = TEST_IMG


class LocalFixture:
    """docker-py's BaseAPIIntegrationTest with TestNetworks' helpers."""

    def __init__(self, host: str) -> None:
        self.client = docker.APIClient(base_url=host, version=TEST_API_VERSION, timeout=60)
        self.tmp_networks: list[str] = []
        self.tmp_containers: list[Any] = []

    def create_network(self, *args: object, **kwargs: object) -> tuple[str, str]:
        net_name = random_name()
        net_id = self.client.create_network(net_name, *args, **kwargs)["Id"]
        self.tmp_networks.append(net_id)
        return net_name, net_id

    def create_and_start(self, **kwargs: Any) -> Any:
        container = self.client.create_container(BUSYBOX, "top", **kwargs)
        self.tmp_containers.append(container)
        self.client.start(container)
        return container

    def execute(self, container: Any, cmd: list[str], exit_code: int = 0) -> None:
        exc = self.client.exec_create(container, cmd)
        output = self.client.exec_start(exc)
        actual_exit_code = self.client.exec_inspect(exc)["ExitCode"]
        assert actual_exit_code == exit_code, f"{' '.join(cmd)} exited {actual_exit_code}:\n{output!r}"

    def tear_down(self) -> None:
        for container in self.tmp_containers:
            try:
                self.client.remove_container(container, force=True)
            except docker.errors.APIError:
                pass
        for network in self.tmp_networks:
            try:
                self.client.remove_network(network)
            except docker.errors.APIError:
                pass
        self.client.close()


@pytest.fixture
def t(daemon: Lab) -> Iterator[LocalFixture]:  # noqa: F811
    fixture = LocalFixture(daemon.node("manager-1").host)
    try:
        yield fixture
    finally:
        fixture.tear_down()


def test_list_networks(t: LocalFixture) -> None:
    networks = t.client.networks()
    net_name, net_id = t.create_network()
    networks = t.client.networks()
    assert net_id in [n["Id"] for n in networks]
    networks_by_name = t.client.networks(names=[net_name])
    assert [n["Id"] for n in networks_by_name] == [net_id]
    networks_by_partial_id = t.client.networks(ids=[net_id[:8]])
    assert [n["Id"] for n in networks_by_partial_id] == [net_id]


def test_inspect_network(t: LocalFixture) -> None:
    net_name, net_id = t.create_network()
    net = t.client.inspect_network(net_id)
    assert net["Id"] == net_id
    assert net["Name"] == net_name
    assert net["Driver"] == "bridge"
    assert net["Scope"] == "local"
    assert net["IPAM"]["Driver"] == "default"


def test_create_network_with_ipam_config(t: LocalFixture) -> None:
    _, net_id = t.create_network(ipam=IPAMConfig(driver="default", pool_configs=[IPAMPool(
        subnet="172.28.0.0/16", iprange="172.28.5.0/24", gateway="172.28.5.254",
        aux_addresses={"a": "172.28.1.5", "b": "172.28.1.6", "c": "172.28.1.7"})]))
    net = t.client.inspect_network(net_id)
    ipam = net["IPAM"]
    assert ipam.pop("Options", None) is None
    assert ipam["Driver"] == "default"
    assert ipam["Config"] == [{
        "Subnet": "172.28.0.0/16", "IPRange": "172.28.5.0/24", "Gateway": "172.28.5.254",
        "AuxiliaryAddresses": {"a": "172.28.1.5", "b": "172.28.1.6", "c": "172.28.1.7"},
    }]


def test_create_network_with_host_driver_fails(t: LocalFixture) -> None:
    with pytest.raises(docker.errors.APIError):
        t.client.create_network(random_name(), driver="host")


def test_remove_network(t: LocalFixture) -> None:
    net_name, net_id = t.create_network()
    assert net_name in [n["Name"] for n in t.client.networks()]
    t.client.remove_network(net_id)
    assert net_name not in [n["Name"] for n in t.client.networks()]


def test_connect_and_disconnect_container(t: LocalFixture) -> None:
    _net_name, net_id = t.create_network()
    container = t.client.create_container(BUSYBOX, "top")
    t.tmp_containers.append(container)
    t.client.start(container)
    network_data = t.client.inspect_network(net_id)
    assert not network_data.get("Containers")
    t.client.connect_container_to_network(container, net_id)
    network_data = t.client.inspect_network(net_id)
    assert list(network_data["Containers"].keys()) == [container["Id"]]
    with pytest.raises(docker.errors.APIError):
        t.client.connect_container_to_network(container, net_id)
    t.client.disconnect_container_from_network(container, net_id)
    network_data = t.client.inspect_network(net_id)
    assert not network_data.get("Containers")
    with pytest.raises(docker.errors.APIError):
        t.client.disconnect_container_from_network(container, net_id)


def test_connect_and_force_disconnect_container(t: LocalFixture) -> None:
    _net_name, net_id = t.create_network()
    container = t.client.create_container(BUSYBOX, "top")
    t.tmp_containers.append(container)
    t.client.start(container)
    network_data = t.client.inspect_network(net_id)
    assert not network_data.get("Containers")
    t.client.connect_container_to_network(container, net_id)
    network_data = t.client.inspect_network(net_id)
    assert list(network_data["Containers"].keys()) == [container["Id"]]
    t.client.disconnect_container_from_network(container, net_id, True)
    network_data = t.client.inspect_network(net_id)
    assert not network_data.get("Containers")
    with pytest.raises(docker.errors.APIError):
        t.client.disconnect_container_from_network(container, net_id, force=True)


def test_connect_with_aliases(t: LocalFixture) -> None:
    net_name, net_id = t.create_network()
    container = t.client.create_container(BUSYBOX, "top")
    t.tmp_containers.append(container)
    t.client.start(container)
    t.client.connect_container_to_network(container, net_id, aliases=["foo", "bar"])
    container_data = t.client.inspect_container(container)
    aliases = container_data["NetworkSettings"]["Networks"][net_name]["Aliases"]
    assert "foo" in aliases
    assert "bar" in aliases


def test_connect_on_create(t: LocalFixture) -> None:
    net_name, net_id = t.create_network()
    container = t.client.create_container(image=BUSYBOX, command="top",
                                          host_config=t.client.create_host_config(network_mode=net_name))
    t.tmp_containers.append(container)
    t.client.start(container)
    network_data = t.client.inspect_network(net_id)
    assert list(network_data["Containers"].keys()) == [container["Id"]]
    t.client.disconnect_container_from_network(container, net_id)
    network_data = t.client.inspect_network(net_id)
    assert not network_data.get("Containers")


def test_create_with_aliases(t: LocalFixture) -> None:
    net_name, _net_id = t.create_network()
    container = t.client.create_container(
        image=BUSYBOX, command="top", host_config=t.client.create_host_config(network_mode=net_name),
        networking_config=t.client.create_networking_config({
            net_name: t.client.create_endpoint_config(aliases=["foo", "bar"])}))
    t.tmp_containers.append(container)
    t.client.start(container)
    container_data = t.client.inspect_container(container)
    aliases = container_data["NetworkSettings"]["Networks"][net_name]["Aliases"]
    assert "foo" in aliases
    assert "bar" in aliases


def test_create_with_ipv4_address(t: LocalFixture) -> None:
    net_name, _net_id = t.create_network(
        ipam=IPAMConfig(driver="default", pool_configs=[IPAMPool(subnet="132.124.0.0/16")]))
    container = t.client.create_container(
        image=BUSYBOX, command="top", host_config=t.client.create_host_config(network_mode=net_name),
        networking_config=t.client.create_networking_config({
            net_name: t.client.create_endpoint_config(ipv4_address="132.124.0.23")}))
    t.tmp_containers.append(container)
    t.client.start(container)
    container_data = t.client.inspect_container(container)
    assert container_data["NetworkSettings"]["Networks"][net_name]["IPAMConfig"]["IPv4Address"] == "132.124.0.23"


def test_create_with_linklocal_ips(t: LocalFixture) -> None:
    container = t.client.create_container(
        BUSYBOX, "top",
        networking_config=t.client.create_networking_config(
            {"bridge": t.client.create_endpoint_config(link_local_ips=["169.254.8.8"])}),
        host_config=t.client.create_host_config(network_mode="bridge"))
    t.tmp_containers.append(container)
    t.client.start(container)
    container_data = t.client.inspect_container(container)
    net_cfg = container_data["NetworkSettings"]["Networks"]["bridge"]
    assert "IPAMConfig" in net_cfg
    assert "LinkLocalIPs" in net_cfg["IPAMConfig"]
    assert net_cfg["IPAMConfig"]["LinkLocalIPs"] == ["169.254.8.8"]


def test_create_with_ipv6_address(t: LocalFixture) -> None:
    net_name, _net_id = t.create_network(
        ipam=IPAMConfig(driver="default", pool_configs=[IPAMPool(subnet="2001:389::1/64")]))
    container = t.client.create_container(
        image=BUSYBOX, command="top", host_config=t.client.create_host_config(network_mode=net_name),
        networking_config=t.client.create_networking_config({
            net_name: t.client.create_endpoint_config(ipv6_address="2001:389::f00d")}))
    t.tmp_containers.append(container)
    t.client.start(container)
    container_data = t.client.inspect_container(container)
    assert container_data["NetworkSettings"]["Networks"][net_name]["IPAMConfig"]["IPv6Address"] == "2001:389::f00d"


def test_connect_with_ipv6_address(t: LocalFixture) -> None:
    net_name, _net_id = t.create_network(ipam=IPAMConfig(driver="default", pool_configs=[
        IPAMPool(subnet="2001:389::1/64", iprange="2001:389::0/96", gateway="2001:389::ffff")]))
    container = t.create_and_start(host_config=t.client.create_host_config(network_mode=net_name))
    t.client.disconnect_container_from_network(container, net_name)
    t.client.connect_container_to_network(container, net_name, ipv6_address="2001:389::f00d")
    container_data = t.client.inspect_container(container)
    net_data = container_data["NetworkSettings"]["Networks"][net_name]
    assert net_data["IPAMConfig"]["IPv6Address"] == "2001:389::f00d"


def test_create_network_ipv6_enabled(t: LocalFixture) -> None:
    _, net_id = t.create_network(enable_ipv6=True, ipam=IPAMConfig(driver="default", pool_configs=[
        IPAMPool(subnet="2001:389::1/64", iprange="2001:389::0/96", gateway="2001:389::ffff")]))
    net = t.client.inspect_network(net_id)
    assert net["EnableIPv6"] is True


def test_connect_with_ipv4_address(t: LocalFixture) -> None:
    net_name, _net_id = t.create_network(ipam=IPAMConfig(driver="default", pool_configs=[
        IPAMPool(subnet="172.28.0.0/16", iprange="172.28.5.0/24", gateway="172.28.5.254")]))
    container = t.create_and_start(host_config=t.client.create_host_config(network_mode=net_name))
    t.client.disconnect_container_from_network(container, net_name)
    t.client.connect_container_to_network(container, net_name, ipv4_address="172.28.5.24")
    container_data = t.client.inspect_container(container)
    net_data = container_data["NetworkSettings"]["Networks"][net_name]
    assert net_data["IPAMConfig"]["IPv4Address"] == "172.28.5.24"


def test_create_internal_networks(t: LocalFixture) -> None:
    _, net_id = t.create_network(internal=True)
    net = t.client.inspect_network(net_id)
    assert net["Internal"] is True


def test_create_network_with_labels(t: LocalFixture) -> None:
    _, net_id = t.create_network(labels={"com.docker.py.test": "label"})
    net = t.client.inspect_network(net_id)
    assert "Labels" in net
    assert len(net["Labels"]) == 1
    assert net["Labels"] == {"com.docker.py.test": "label"}


def test_create_network_with_labels_wrong_type(t: LocalFixture) -> None:
    with pytest.raises(TypeError):
        t.create_network(labels=["com.docker.py.test=label"])


def test_prune_networks(t: LocalFixture) -> None:
    net_name, _ = t.create_network()
    result = t.client.prune_networks()
    assert net_name in result["NetworksDeleted"]


def test_create_with_driveropt(t: LocalFixture) -> None:
    container = t.client.create_container(
        BUSYBOX, "top",
        networking_config=t.client.create_networking_config(
            {"bridge": t.client.create_endpoint_config(driver_opt={"com.docker-py.setting": "on"})}),
        host_config=t.client.create_host_config(network_mode="bridge"))
    t.tmp_containers.append(container)
    t.client.start(container)
    container_data = t.client.inspect_container(container)
    net_cfg = container_data["NetworkSettings"]["Networks"]["bridge"]
    assert "DriverOpts" in net_cfg
    assert "com.docker-py.setting" in net_cfg["DriverOpts"]
    assert net_cfg["DriverOpts"]["com.docker-py.setting"] == "on"


def test_create_with_links(t: LocalFixture) -> None:
    net_name, _net_id = t.create_network()
    container = t.create_and_start(
        host_config=t.client.create_host_config(network_mode=net_name),
        networking_config=t.client.create_networking_config({
            net_name: t.client.create_endpoint_config(links=[("docker-py-test-upstream", "bar")])}))
    net_settings = t.client.inspect_container(container)["NetworkSettings"]
    assert net_settings["Networks"][net_name]["Links"] == ["docker-py-test-upstream:bar"]
    t.create_and_start(name="docker-py-test-upstream", host_config=t.client.create_host_config(network_mode=net_name))
    t.execute(container, ["nslookup", "bar"])


def test_connect_with_links(t: LocalFixture) -> None:
    net_name, _net_id = t.create_network()
    container = t.create_and_start(host_config=t.client.create_host_config(network_mode=net_name))
    t.client.disconnect_container_from_network(container, net_name)
    t.client.connect_container_to_network(container, net_name, links=[("docker-py-test-upstream", "bar")])
    net_settings = t.client.inspect_container(container)["NetworkSettings"]
    assert net_settings["Networks"][net_name]["Links"] == ["docker-py-test-upstream:bar"]
    t.create_and_start(name="docker-py-test-upstream", host_config=t.client.create_host_config(network_mode=net_name))
    t.execute(container, ["nslookup", "bar"])


def test_connect_with_mac_address(t: LocalFixture) -> None:
    net_name, _net_id = t.create_network()
    container = t.client.create_container(BUSYBOX, "top")
    t.tmp_containers.append(container)
    t.client.connect_container_to_network(container, net_name, mac_address="02:42:ac:11:00:02")
    container_data = t.client.inspect_container(container)
    net_data = container_data["NetworkSettings"]["Networks"][net_name]
    assert net_data["MacAddress"] == "02:42:ac:11:00:02"


def test_create_inspect_network_with_scope_local(t: LocalFixture) -> None:
    net_name_loc, _net_id_loc = t.create_network(scope="local")
    assert t.client.inspect_network(net_name_loc)
    assert t.client.inspect_network(net_name_loc, scope="local")
    with pytest.raises(docker.errors.NotFound):
        t.client.inspect_network(net_name_loc, scope="global")
