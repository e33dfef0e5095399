"""A task's /etc/resolv.conf and the upstreams taken from the host's."""

from __future__ import annotations

import ipaddress

from ingress.dns import Upstream, resolv_conf, upstreams

HOST = """\
# managed by someone
nameserver 10.255.255.53
nameserver 127.0.0.53   # systemd-resolved
search corp.example lab.example
options edns0 timeout:2
"""


def test_nameservers_become_the_embedded_server_and_search_domains_stay() -> None:
    assert resolv_conf(HOST) == (
        "nameserver 127.0.0.11\n"
        "search corp.example lab.example\n"
        "options edns0 timeout:2 ndots:0\n"
    )


def test_ndots_is_kept_when_the_host_sets_it() -> None:
    out = resolv_conf("nameserver 1.1.1.1\noptions ndots:3 rotate\n")
    assert out == "nameserver 127.0.0.11\noptions ndots:3 rotate\n"


def test_no_search_line_without_host_domains_and_the_last_domain_or_search_wins() -> None:
    assert resolv_conf("nameserver 1.1.1.1\n") == "nameserver 127.0.0.11\noptions ndots:0\n"
    assert resolv_conf("search a.example\ndomain b.example\n") == (
        "nameserver 127.0.0.11\nsearch b.example\noptions ndots:0\n")
    assert resolv_conf("") == "nameserver 127.0.0.11\noptions ndots:0\n"


def test_upstreams_are_the_hosts_nameservers_at_most_three() -> None:
    text = "\n".join(f"nameserver 10.0.0.{i}" for i in range(1, 6)) + "\n"
    assert [str(u) for u in upstreams(text)] == ["10.0.0.1:53", "10.0.0.2:53", "10.0.0.3:53"]
    assert [str(u) for u in upstreams(HOST)] == ["10.255.255.53:53", "127.0.0.53:53"]


def test_upstreams_skip_ourselves_garbage_duplicates_and_scoped_addresses() -> None:
    text = ("nameserver 127.0.0.11\nnameserver not-an-address\nnameserver\nnameserver 10.0.0.1\n"
            "nameserver 10.0.0.1\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\n")
    assert [str(u) for u in upstreams(text)] == ["10.0.0.1:53", "[2001:db8::53]:53"]
    assert upstreams("search example.com\n") == []


def test_host_loopback_upstreams_are_recognised() -> None:
    assert Upstream(ipaddress.ip_address("127.0.0.53")).host_loopback
    assert Upstream(ipaddress.ip_address("127.1.2.3")).host_loopback
    assert Upstream(ipaddress.ip_address("::1")).host_loopback
    assert not Upstream(ipaddress.ip_address("10.255.255.53")).host_loopback
