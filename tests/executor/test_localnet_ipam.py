"""The address management of local networks (worker.localnet.ipam), without a network: default
pools skip the taken ones, a configured pool is checked, addresses come from the range and never
are the gateway, an auxiliary or a used one; dockerd's statuses and texts."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from worker.localnet.ipam import IpamError, Pool, allocate, ipv6_pool, pool_from_config


def test_default_pools_skip_what_other_networks_use() -> None:
    first = pool_from_config(None, [])
    assert (first.subnet, first.gateway) == (IPv4Network("172.18.0.0/16"), IPv4Address("172.18.0.1"))
    assert pool_from_config([], [IPv4Network("172.18.0.0/16"), IPv4Network("172.19.5.0/24")]).subnet == \
        IPv4Network("172.20.0.0/16")
    assert first.to_api(with_range=False) == {"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}


def test_a_configured_pool_and_its_addresses() -> None:
    pool = pool_from_config([{"Subnet": "10.9.0.0/24", "IPRange": "10.9.0.0/29", "Gateway": "10.9.0.1",
                              "AuxiliaryAddresses": {"router": "10.9.0.2"}}], [])
    assert Pool.from_api(pool.to_api(with_range=True)) == pool
    assert allocate(pool, set()) == IPv4Address("10.9.0.3")          # not the gateway, not the aux
    assert allocate(pool, {IPv4Address("10.9.0.3")}) == IPv4Address("10.9.0.4")
    assert allocate(pool, set(), "10.9.0.200") == IPv4Address("10.9.0.200")   # fixed: anywhere in the subnet
    full = {IPv4Address(f"10.9.0.{n}") for n in range(3, 8)}
    with pytest.raises(IpamError, match="no available IPv4 addresses"):
        allocate(pool, full)


@pytest.mark.parametrize(("configs", "taken", "status", "text"), [
    ([{"Subnet": "10.0.0.0/24"}], [IPv4Network("10.0.0.128/25")], 403, "Pool overlaps with other one"),
    ([{"Subnet": "nonsense"}], [], 400, "invalid subnet nonsense"),
    ([{"Subnet": "2001:db8::/64"}], [], 400, "IPv6 is not supported"),
    ([{"Subnet": "10.0.0.0/24", "IPRange": "10.0.1.0/28"}], [], 400, "is not in subnet"),
    ([{"Subnet": "10.0.0.0/24", "Gateway": "10.0.5.1"}], [], 400, "gateway 10.0.5.1 is not in subnet"),
    ([{"Subnet": "10.0.0.0/24"}, {"Subnet": "10.0.1.0/24"}], [], 400, "one IPv4 pool"),
    ("x", [], 400, "IPAM.Config must be a list"),
])
def test_bad_pools(configs: object, taken: list[IPv4Network], status: int, text: str) -> None:
    with pytest.raises(IpamError) as caught:
        pool_from_config(configs, taken)
    assert caught.value.status == status and text in caught.value.message


def test_fixed_addresses_in_use_or_outside() -> None:
    pool = pool_from_config([{"Subnet": "10.1.0.0/24"}], [])
    with pytest.raises(IpamError, match=r"Address already in use: 10\.1\.0\.1"):
        allocate(pool, set(), "10.1.0.1")                          # the gateway
    with pytest.raises(IpamError, match=r"Address already in use: 10\.1\.0\.9"):
        allocate(pool, {IPv4Address("10.1.0.9")}, "10.1.0.9")
    with pytest.raises(IpamError, match="is not in subnet"):
        allocate(pool, set(), "10.2.0.9")


def test_ipv6_pools() -> None:
    assert ipv6_pool([{"Subnet": "10.0.0.0/24"}], []) is None
    pool = ipv6_pool([{"Subnet": "10.0.0.0/24"}, {"Subnet": "2001:db8::/64", "IPRange": "2001:db8::/96"}], [])
    assert pool is not None and pool.to_api(with_range=True) == {
        "Subnet": "2001:db8::/64", "IPRange": "2001:db8::/96", "Gateway": "2001:db8::1"}
    assert allocate(pool, set()) == IPv6Address("2001:db8::2")
    assert allocate(pool, set(), "2001:db8::f00d") == IPv6Address("2001:db8::f00d")
    for configs, taken, text in (([{"Subnet": "ff00::/8"}], [], "not a unicast IPv6 subnet"),
                                 ([{"Subnet": "::/0"}], [], "not a unicast IPv6 subnet"),
                                 ([{"Subnet": "2001:db8::/127"}], [], "too small"),
                                 ([{"Subnet": "2001:db8::/64"}, {"Subnet": "2001:db9::/64"}], [], "one IPv6 pool"),
                                 ([{"Subnet": "2001:db8::/64"}], [IPv6Network("2001:db8::/48")], "Pool overlaps"),
                                 ([{"Subnet": "2001:db8::/64", "Gateway": "2001:db9::1"}], [], "is not in subnet")):
        with pytest.raises(IpamError, match=text):
            ipv6_pool(configs, taken)
