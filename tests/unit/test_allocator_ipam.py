"""Pure parts of the allocator: address arithmetic, IPAM checks with Docker's texts, and the
network settings of `swarm init`."""

from __future__ import annotations

import ipaddress

import pytest

from manager.allocator import (
    NetworkSettings,
    ingress_network,
    init_network_settings,
    validate_data_path_port,
    validate_default_addr_pool,
)
from manager.allocator.ipam import (
    IpamError,
    SubnetConfig,
    next_address,
    next_pool_subnet,
    next_vni,
    parse_requested,
    parse_vni_list,
)
from manager.specs import SpecError
from model import Cluster

net = ipaddress.ip_network


def test_init_settings_default_and_custom() -> None:
    assert init_network_settings({}) == NetworkSettings(["10.0.0.0/8"], 24, 4789)
    got = init_network_settings({"DefaultAddrPool": ["2.0.0.0/16", " 3.0.0.0/16"], "SubnetSize": 28,
                                 "DataPathPort": 4242})
    assert got == NetworkSettings(["2.0.0.0/16", "3.0.0.0/16"], 28, 4242)
    cluster = Cluster(id="c")
    got.apply(cluster)
    api = cluster.to_api(include_join_tokens=False)
    assert (api["DefaultAddrPool"], api["SubnetSize"], api["DataPathPort"]) == (["2.0.0.0/16", "3.0.0.0/16"], 28, 4242)
    assert init_network_settings({"SubnetSize": 0, "DataPathPort": 0}) == NetworkSettings()


@pytest.mark.parametrize(("request_body", "text"), [
    ({"DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 30}, "subnet size is out of range: 30"),
    ({"DefaultAddrPool": ["10.10.0.0/16"], "SubnetSize": 12},
     'invalid CIDR: "10.10.0.0/16". Subnet size is too small for pool: 12'),
    ({"DefaultAddrPool": ["10.0.0.0/33"]}, "invalid base pool 10.0.0.0/33: invalid CIDR address: 10.0.0.0/33"),
    ({"DefaultAddrPool": ["10.0.0.0/8", "10.1.0.0/16"]},
     "invalid default address pool: 10.1.0.0/16 overlaps with 10.0.0.0/8"),
    ({"DataPathPort": 80}, "Datapath port number is not in valid range (1024-49151) : 80"),
    ({"DataPathPort": 49152}, "Datapath port number is not in valid range (1024-49151) : 49152"),
    ({"DataPathPort": "4789"}, "invalid swarm init request: DataPathPort must be an integer, not '4789'"),
    ({"DefaultAddrPool": "10.0.0.0/8"},
     "invalid swarm init request: DefaultAddrPool must be a list of CIDRs, not '10.0.0.0/8'"),
])
def test_init_settings_errors(request_body: dict, text: str) -> None:
    with pytest.raises(SpecError) as caught:
        init_network_settings(request_body)
    assert caught.value.message == text


def test_single_validators() -> None:
    assert validate_default_addr_pool(None, 0) == (["10.0.0.0/8"], 24)
    assert validate_default_addr_pool(["10.0.0.0/8"], 29) == (["10.0.0.0/8"], 29)
    assert validate_data_path_port(1024) == 1024 and validate_data_path_port(49151) == 49151


def test_ingress_network_object() -> None:
    ingress = ingress_network()
    assert ingress.spec == {"Name": "ingress", "Labels": {}, "Driver": "overlay", "Scope": "swarm", "Ingress": True}
    assert not ingress.allocated and ingress.is_ingress
    assert ingress.to_api()["Ingress"] is True and ingress.to_api()["IPAM"]["Config"] == []


def test_pool_subnets_skip_taken_blocks() -> None:
    assert next_pool_subnet(["10.0.0.0/8"], 24, []) == net("10.0.0.0/24")
    assert next_pool_subnet(["10.0.0.0/8"], 24, [net("10.0.0.0/24"), net("10.0.1.0/25")]) == net("10.0.2.0/24")
    assert next_pool_subnet(["10.0.0.0/8"], 24, [net("10.0.0.0/16")]) == net("10.1.0.0/24")
    assert next_pool_subnet(["10.0.0.0/30", "10.1.0.0/16"], 24, []) == net("10.1.0.0/24")  # too small: skipped
    assert next_pool_subnet(["10.0.0.0/23"], 24, [net("10.0.0.0/24"), net("10.0.1.0/24")]) is None
    assert next_pool_subnet(["10.0.0.0/8"], 16, [net("10.0.5.0/24")]) == net("10.1.0.0/16")


def test_vni_serial_with_wrap_around() -> None:
    assert next_vni(set(), 4095) == 4096
    assert next_vni({4096, 4097}, 4097) == 4098
    assert next_vni({4098}, 4097) == 4099
    assert next_vni(set(), (1 << 24) - 1) == 4096  # wraps
    assert next_vni({4096}, (1 << 24) - 2) == (1 << 24) - 1


def test_serial_addresses_wrap_and_skip_reserved() -> None:
    config = SubnetConfig(net("10.9.0.0/29"), ipaddress.ip_address("10.9.0.1"))
    assert str(next_address(config, set(), None)) == "10.9.0.2"
    assert str(next_address(config, set(), "10.9.0.3")) == "10.9.0.4"
    assert str(next_address(config, set(), "10.9.0.6")) == "10.9.0.2"  # wraps to the start
    used = {int(ipaddress.ip_address(f"10.9.0.{i}")) for i in (2, 3, 5)}
    assert str(next_address(config, used, "10.9.0.6")) == "10.9.0.4"
    full = {int(ipaddress.ip_address(f"10.9.0.{i}")) for i in range(2, 7)}
    assert next_address(config, full, "10.9.0.3") is None
    ranged = SubnetConfig(net("10.9.0.0/24"), ipaddress.ip_address("10.9.0.1"), net("10.9.0.0/30"),
                          {"db": "10.9.0.2"})
    assert str(next_address(ranged, set(), None)) == "10.9.0.3"  # .0 network, .1 gateway, .2 auxiliary
    assert next_address(ranged, {int(ipaddress.ip_address("10.9.0.3"))}, None) is None


@pytest.mark.parametrize(("config", "text"), [
    ({"Subnet": "10.9.0.0/33"}, "ipam configuration: invalid subnet 10.9.0.0/33"),
    ({"Subnet": "10.9.0.1/24"}, "ipam configuration: invalid subnet 10.9.0.1/24"),
    ({"Subnet": "10.9.0.0/24", "IPRange": "10.8.0.0/25"},
     "ipam configuration: subnet 10.9.0.0/24 does not contain range 10.8.0.0/25"),
    ({"Subnet": "10.9.0.0/24", "IPRange": "bogus"}, "ipam configuration: invalid range bogus"),
    ({"Subnet": "10.9.0.0/24", "Gateway": "10.9.1.1"},
     "ipam configuration: subnet 10.9.0.0/24 does not contain gateway 10.9.1.1"),
    ({"Subnet": "10.9.0.0/24", "Gateway": "x"}, "ipam configuration: invalid gateway x"),
])
def test_ipam_config_errors(config: dict, text: str) -> None:
    with pytest.raises(IpamError) as caught:
        parse_requested({"Config": [config]})
    assert caught.value.message == text


def test_vni_list_parsing() -> None:
    key = "com.docker.network.driver.overlay.vxlanid_list"
    assert parse_vni_list({key: "4097,5000"}) == [4097, 5000]
    assert parse_vni_list({}) == []
    with pytest.raises(IpamError, match='invalid vxlan id value "x" passed'):
        parse_vni_list({key: "x"})
