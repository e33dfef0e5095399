"""The gateway bridge through a host firewall that drops forwarded traffic: which chains, which
rules, and an earlier life's rules replaced (overlay/firewall.py, the pure part)."""

from __future__ import annotations

from overlay.firewall import commented_handles, forward_accept_rules, forward_chains


def chain(family: str, table: str, name: str, **extra: object) -> dict[str, object]:
    return {"chain": {"family": family, "table": table, "name": name, "handle": 1, **extra}}


def test_only_base_forward_chains_that_drop_are_opened() -> None:
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        chain("ip", "filter", "FORWARD", type="filter", hook="forward", prio=0, policy="drop"),    # iptables/ufw
        chain("inet", "fw", "fwd", type="filter", hook="forward", prio=0, policy="drop"),          # nftables
        chain("ip", "filter", "INPUT", type="filter", hook="input", prio=0, policy="drop"),
        chain("ip", "open", "forward", type="filter", hook="forward", prio=0, policy="accept"),
        chain("ip", "filter", "DOCKER-USER"),                                                       # not a base chain
        chain("bridge", "br", "forward", type="filter", hook="forward", prio=0, policy="drop"),
        chain("ip", "shoal-gw", "forward", type="filter", hook="forward", prio=0, policy="drop"),  # our own
    ]}
    assert forward_chains(listing, "shoal") == [("ip", "filter", "FORWARD"), ("inet", "fw", "fwd")]


def test_the_rules_replace_an_earlier_lifes_in_one_transaction() -> None:
    listing = {"nftables": [chain("ip", "filter", "FORWARD"),
                            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 7,
                                      "comment": "shoal-gw:shoal_gwbridge", "expr": []}},
                            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 9,
                                      "expr": []}}]}
    stale = commented_handles(listing, "shoal-gw:shoal_gwbridge")
    assert stale == [7]
    script = forward_accept_rules("ip", "filter", "FORWARD", "shoal_gwbridge", "shoal-gw:shoal_gwbridge", stale)
    assert script.splitlines() == [
        "delete rule ip filter FORWARD handle 7",
        'insert rule ip filter FORWARD oifname "shoal_gwbridge" ct status dnat accept '
        'comment "shoal-gw:shoal_gwbridge"',
        'insert rule ip filter FORWARD oifname "shoal_gwbridge" ct state established,related accept '
        'comment "shoal-gw:shoal_gwbridge"',
        'insert rule ip filter FORWARD iifname "shoal_gwbridge" accept comment "shoal-gw:shoal_gwbridge"']
