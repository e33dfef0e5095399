"""The overlay's pure planning: names, MACs, the peer diff, gateway addresses, spec checks,
and the records a daemon keeps in run_dir (no kernel, no root)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.endpoint import endpoint_mac
from overlay import plan
from overlay.plan import GatewayPool, PeerEntries, VxlanParams, plan_peers, wanted_entries
from overlay.spec import Attachment, OverlaySpec, Peer, mtu_from_options
from overlay.state import AttachmentRecord, SandboxRecord, StateDir

VTEP_A = IPv4Address("198.18.0.1")
VTEP_B = IPv4Address("198.18.0.2")
VTEP_C = IPv4Address("198.18.0.3")


def peer(last: int, vtep: IPv4Address = VTEP_B) -> Peer:
    ip = IPv4Address(f"10.0.1.{last}")
    return Peer(ip, endpoint_mac(ip), vtep)


def net(network_id: str = "n1", **kw) -> OverlaySpec:
    return OverlaySpec(network_id, kw.pop("vni", 4097), IPv4Network("10.0.1.0/24"), IPv4Address("10.0.1.1"), **kw)


# ---------------------------------------------------------------- names and MACs

def test_mac_is_02_42_and_the_address_bytes() -> None:
    assert endpoint_mac(IPv4Address("10.0.1.5")) == "02:42:0a:00:01:05"
    assert endpoint_mac(IPv4Address("172.18.255.254")) == "02:42:ac:12:ff:fe"


def test_device_names_fit_ifnamsiz_at_the_longest_prefix() -> None:
    prefix = "a" * plan.MAX_PREFIX
    top = IPv4Address("255.255.255.255")
    names = [plan.gateway_bridge_name(prefix), plan.gateway_veth_name(prefix, top),
             plan.staging_vxlan_name(prefix, (1 << 24) - 1), plan.overlay_veth_name(top),
             plan.container_ifname(999), plan.BRIDGE, plan.VXLAN]
    assert all(len(name) <= plan.IFNAMSIZ for name in names), names
    assert plan.gateway_bridge_name("shoal") == "shoal_gwbridge"
    assert plan.nft_table_name("shoal") == "shoal-gw"
    assert plan.overlay_veth_name(IPv4Address("10.0.1.5")) == "ve0a000105"


@pytest.mark.parametrize("prefix", ["", "toolong", "Shoal", "sh-al", "shöal"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        plan.check_prefix(prefix)


def test_staging_names_are_recognised_only_for_their_prefix() -> None:
    name = plan.staging_vxlan_name("shoal", 4097)
    assert name == "shoalx001001"
    assert plan.is_staging_vxlan_name("shoal", name)
    assert not plan.is_staging_vxlan_name("other", name)
    assert not plan.is_staging_vxlan_name("shoal", "shoal_gwbridge")
    assert not plan.is_staging_vxlan_name("shoal", "shoalx00100z")


def test_netns_names_round_trip_and_refuse_paths() -> None:
    assert plan.parse_netns_name(plan.network_netns_name("abc123")) == ("network", "abc123")
    assert plan.parse_netns_name(plan.sandbox_netns_name("c0ffee.1")) == ("sandbox", "c0ffee.1")
    assert plan.parse_netns_name("x-abc") is None
    assert plan.parse_netns_name("n-") is None
    for bad in ("../etc", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            plan.sandbox_netns_name(bad)


# ---------------------------------------------------------------- the peer diff

def test_wanted_entries_skip_the_local_vtep() -> None:
    entries = wanted_entries([peer(2, VTEP_A), peer(3, VTEP_B)], local_vtep=VTEP_A)
    assert entries.neigh == {(IPv4Address("10.0.1.3"), "02:42:0a:00:01:03")}
    assert entries.fdb == {("02:42:0a:00:01:03", VTEP_B)}
    assert entries.peers() == {peer(3)}


def test_conflicting_peers_are_refused() -> None:
    ip = IPv4Address("10.0.1.3")
    with pytest.raises(ValueError, match="two MACs"):
        wanted_entries([Peer(ip, "02:42:0a:00:01:03", VTEP_B), Peer(ip, "02:42:0a:00:01:04", VTEP_B)])
    with pytest.raises(ValueError, match="two VTEPs"):
        wanted_entries([peer(3, VTEP_B), Peer(IPv4Address("10.0.1.9"), peer(3).mac, VTEP_C)])


def test_plan_from_nothing_adds_and_from_the_same_does_nothing() -> None:
    wanted = wanted_entries([peer(3), peer(4, VTEP_C)])
    steps = plan_peers(PeerEntries(), wanted)
    assert (steps.neigh_del, steps.fdb_del) == ((), ())
    assert [ip for ip, _ in steps.neigh_add] == [IPv4Address("10.0.1.3"), IPv4Address("10.0.1.4")]
    assert set(steps.fdb_add) == wanted.fdb
    assert plan_peers(wanted, wanted).empty


def test_plan_removes_stale_peers() -> None:
    current = wanted_entries([peer(3), peer(4)])
    steps = plan_peers(current, wanted_entries([peer(3)]))
    assert steps.neigh_del == ((IPv4Address("10.0.1.4"), "02:42:0a:00:01:04"),)
    assert steps.fdb_del == (("02:42:0a:00:01:04", VTEP_B),)
    assert (steps.neigh_add, steps.fdb_add) == ((), ())


def test_a_moved_peer_loses_its_old_destination_and_keeps_its_neighbour() -> None:
    steps = plan_peers(wanted_entries([peer(3, VTEP_B)]), wanted_entries([peer(3, VTEP_C)]))
    assert steps.neigh_del == () and steps.neigh_add == ()
    assert steps.fdb_del == (("02:42:0a:00:01:03", VTEP_B),)
    assert steps.fdb_add == (("02:42:0a:00:01:03", VTEP_C),)


def test_a_changed_mac_is_replaced_not_deleted() -> None:
    ip = IPv4Address("10.0.1.3")
    current = PeerEntries(frozenset({(ip, "02:00:00:00:00:01")}), frozenset({("02:00:00:00:00:01", VTEP_B)}))
    steps = plan_peers(current, wanted_entries([peer(3)]))
    assert steps.neigh_del == ()
    assert steps.neigh_add == ((ip, "02:42:0a:00:01:03"),)
    assert steps.fdb_del == (("02:00:00:00:00:01", VTEP_B),)


_ips = st.integers(min_value=2, max_value=30).map(lambda n: IPv4Address(f"10.0.1.{n}"))
_macs = st.integers(min_value=1, max_value=8).map(lambda n: f"02:00:00:00:00:{n:02x}")
_vteps = st.sampled_from([VTEP_A, VTEP_B, VTEP_C])
_entries = st.builds(
    lambda neigh, fdb: PeerEntries(frozenset(neigh.items()), frozenset(fdb)),
    st.dictionaries(_ips, _macs, max_size=8),                    # the kernel keys neighbours by IP
    st.sets(st.tuples(_macs, _vteps), max_size=10),              # a VXLAN MAC may have several dsts
)
_peer_sets = st.lists(st.builds(lambda n, vtep: peer(n, vtep), st.integers(2, 30), _vteps), max_size=10,
                      unique_by=lambda p: p.ip)


def _apply(current: PeerEntries, steps: plan.PeerPlan) -> PeerEntries:
    """A model of the kernel: replace-by-IP for neighbours, a set of (mac, dst) for the FDB."""
    neigh = dict(current.neigh)
    fdb = set(current.fdb)
    for ip, _ in steps.neigh_del:
        neigh.pop(ip)
    fdb -= set(steps.fdb_del)
    neigh.update(steps.neigh_add)
    fdb |= set(steps.fdb_add)
    return PeerEntries(frozenset(neigh.items()), frozenset(fdb))


@given(_entries, _peer_sets, _vteps)
def test_applying_the_plan_yields_exactly_the_wanted_entries(current, peers, local) -> None:
    wanted = wanted_entries(peers, local_vtep=local)
    steps = plan_peers(current, wanted)
    assert _apply(current, steps) == wanted
    assert plan_peers(wanted, wanted).empty
    assert len(steps.neigh_del) + len(steps.neigh_add) <= len(current.neigh) + len(wanted.neigh)
    assert not set(steps.fdb_del) & wanted.fdb                # nothing wanted is ever removed


# ---------------------------------------------------------------- gateway bridge, VXLAN, nft

def test_gateway_pool_hands_out_the_lowest_free_address() -> None:
    pool = GatewayPool(IPv4Network("172.18.0.0/16"))
    assert pool.gateway == IPv4Interface("172.18.0.1/16")
    assert pool.allocate([]) == IPv4Interface("172.18.0.2/16")
    assert pool.allocate([IPv4Address("172.18.0.2"), IPv4Address("172.18.0.4")]) == IPv4Interface("172.18.0.3/16")


def test_gateway_pool_exhaustion_is_an_error() -> None:
    pool = GatewayPool(IPv4Network("172.30.0.0/30"))          # .1 is the bridge, .2 the only host
    assert pool.allocate([]) == IPv4Interface("172.30.0.2/30")
    with pytest.raises(ValueError, match="exhausted"):
        pool.allocate([IPv4Address("172.30.0.2")])


def test_vxlan_is_recreated_only_when_what_identifies_it_changes() -> None:
    wanted = VxlanParams(vni=4097, port=4789, local=VTEP_A)
    assert not plan.vxlan_needs_recreate(VxlanParams(4097, 4789, VTEP_A), wanted)
    assert plan.vxlan_needs_recreate(None, wanted)
    assert plan.vxlan_needs_recreate(VxlanParams(4097, 4789, VTEP_B), wanted)
    assert plan.vxlan_needs_recreate(VxlanParams(4097, 7789, VTEP_A), wanted)
    assert plan.vxlan_needs_recreate(VxlanParams(4097, 4789, VTEP_A, learning=True), wanted)


def test_masquerade_ruleset_is_one_idempotent_transaction() -> None:
    script = plan.masquerade_ruleset("shoal-gw", IPv4Network("172.18.0.0/16"), "shoal_gwbridge")
    lines = script.splitlines()
    assert lines[:2] == ["table ip shoal-gw {}", "delete table ip shoal-gw"]
    assert 'ip saddr 172.18.0.0/16 oifname != "shoal_gwbridge" masquerade' in script
    assert plan.delete_table_ruleset("shoal-gw").splitlines() == lines[:2]


def test_vxlan_datagrams_are_left_untracked_both_ways() -> None:
    script = plan.vxlan_untracked_ruleset(plan.vxlan_table_name("shoal"), 7789)
    assert script.splitlines()[:2] == ["table ip shoal-vxlan {}", "delete table ip shoal-vxlan"]
    assert script.count("udp dport 7789 notrack") == 2
    assert "hook prerouting priority raw" in script and "hook output priority raw" in script


# ---------------------------------------------------------------- specs

def test_mtu_is_the_option_minus_50_or_1450() -> None:
    assert mtu_from_options(None) == 1450
    assert mtu_from_options({}) == 1450
    assert mtu_from_options({"com.docker.network.driver.mtu": "9000"}) == 8950
    assert mtu_from_options({"com.docker.network.driver.mtu": " 1400 "}) == 1350
    for bad in ("abc", "100", "70000"):
        with pytest.raises(ValueError):
            mtu_from_options({"com.docker.network.driver.mtu": bad})


def test_specs_refuse_what_cannot_be_programmed() -> None:
    assert net().mtu == 1450 and not net().internal
    with pytest.raises(ValueError, match="vni"):
        net(vni=1 << 24)
    with pytest.raises(ValueError, match="gateway"):
        OverlaySpec("n1", 4097, IPv4Network("10.0.1.0/24"), IPv4Address("10.0.2.1"))
    with pytest.raises(ValueError, match="gateway"):
        OverlaySpec("n1", 4097, IPv4Network("10.0.1.0/24"), IPv4Address("10.0.1.255"))
    with pytest.raises(ValueError, match="network id"):
        net("../x")
    with pytest.raises(ValueError, match="MAC"):
        Peer(IPv4Address("10.0.1.3"), "02:42:0a:00:01", VTEP_B)
    assert Peer(IPv4Address("10.0.1.3"), "02:42:0A:00:01:03", VTEP_B).mac == "02:42:0a:00:01:03"


def test_attachments_must_be_hosts_of_their_subnet() -> None:
    assert Attachment(net(), IPv4Interface("10.0.1.5/24")).address.ip == IPv4Address("10.0.1.5")
    for bad in ("10.0.2.5/24", "10.0.1.5/16", "10.0.1.1/24", "10.0.1.0/24", "10.0.1.255/24"):
        with pytest.raises(ValueError):
            Attachment(net(), IPv4Interface(bad))


# ---------------------------------------------------------------- records in run_dir

def test_records_round_trip_and_unreadable_ones_count_as_absent(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.make_dirs()
    spec = net(mtu=1400, internal=True)
    state.save_network(spec)
    record = SandboxRecord("c1", (AttachmentRecord("n1", IPv4Interface("10.0.1.5/24"), "eth0"),),
                           IPv4Interface("172.18.0.2/16"), "eth1")
    state.save_sandbox(record)
    state.save_sandbox(SandboxRecord("c2"))
    (state.networks_dir / "broken.json").write_text("{not json")
    (state.sandboxes_dir / "partial.json").write_text('{"attachments": []}')
    assert state.load_networks() == {"n1": spec}
    assert state.load_sandboxes() == {"c1": record, "c2": SandboxRecord("c2")}
    assert not list(tmp_path.rglob(".*.tmp"))
    state.drop_network("n1")
    state.drop_sandbox("c1")
    state.drop_sandbox("c1")
    assert state.load_networks() == {}
    assert set(state.load_sandboxes()) == {"c2"}
    assert state.sandbox_netns("c2") == tmp_path / "netns" / "s-c2"
