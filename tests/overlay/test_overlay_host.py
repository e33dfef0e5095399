"""The overlay data path on the real kernel: two hosts (namespaces joined by a veth on the
underlay), an OverlayHost in each, real VXLAN between them. See conftest.py for the testbed."""

from __future__ import annotations

import asyncio
import os
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from overlay import DEFAULT_GATEWAY_SUBNET, OverlayError, OverlaySpec, Peer, mac_from_ip
from tests.overlay.support import (
    PORT,
    TwoHosts,
    connect_error,
    default_route,
    endpoint,
    inode,
    ipr_in,
    links,
    needs_root_and_tools,
    off_loop,
    peer_of,
    ping,
    run_in,
    socket_in,
    spec,
    tcp_echo,
)
from tests.support.wait import wait_until

pytestmark = [pytest.mark.lab, needs_root_and_tools()]

NET1 = spec("net1", 4097, 1)
NET2 = spec("net2", 4098, 2)
INTERNAL = spec("net3", 4099, 3, internal=True)


async def _one_network(bed: TwoHosts, net=NET1, a_byte: int = 2, b_byte: int = 3):
    """`net` on both hosts with sandbox "sa" on A and "sb" on B, peers programmed both ways."""
    a, b = bed.a, bed.b
    ea, eb = endpoint(net, a_byte), endpoint(net, b_byte)
    for host, key, att in ((a, f"{net.network_id}-sa", ea), (b, f"{net.network_id}-sb", eb)):
        await host.ov.ensure_network(net)
        await host.ov.create_sandbox(key)
        await host.ov.attach(key, [att])
    await a.ov.set_peers(net.network_id, [peer_of(eb, b), peer_of(ea, a)])   # its own is skipped
    await b.ov.set_peers(net.network_id, [peer_of(ea, a)])
    return a.ov.sandbox_path(f"{net.network_id}-sa"), b.ov.sandbox_path(f"{net.network_id}-sb"), ea, eb


async def test_ping_mtu_and_64k_cross_hosts_over_vxlan(testbed: TwoHosts) -> None:
    sa, sb, ea, eb = await _one_network(testbed)
    wait_until(lambda: ping(sa, eb.address.ip), timeout=5, what="ping A→B over the overlay")
    assert ping(sb, ea.address.ip)

    inside = links(sa)
    assert set(inside) == {"lo", "eth0", "eth1"}          # eth1: the gateway bridge
    assert inside["eth0"]["mtu"] == 1450
    assert inside["eth0"]["mac"] == mac_from_ip(ea.address.ip) == "02:42:0a:00:01:02"
    assert inside["eth0"]["addresses"] == {ea.address}
    assert inside["lo"]["state"] == "up"

    payload = os.urandom(64 * 1024)
    echoed, seen = await tcp_echo(sb, eb.address.ip, sa, payload)
    assert echoed == payload
    assert seen == str(ea.address.ip)                     # no NAT on the overlay
    # The VXLAN datagrams are not tracked in the hosts' namespaces (their nat tables turn
    # conntrack on there): no lookup per packet, no entry per inner flow.
    for host in (testbed.a, testbed.b):
        tracked = run_in(host.ns, "conntrack", "-L", "-p", "udp", "--dport", str(PORT))
        assert tracked.returncode == 0 and "dport=4789" not in tracked.stdout, tracked.stdout
        assert "shoal" in run_in(host.ns, "nft", "list", "tables").stdout, "the hosts have their nat tables"

    # The network's namespace: br0 with the gateway, vxlan0 as Docker would have it but nolearning.
    net_links = links(testbed.a.network_ns("net1"))
    assert net_links["br0"]["addresses"] == {IPv4Interface("10.0.1.1/24")}
    assert net_links["vxlan0"]["master"] == net_links["br0"]["index"]
    assert net_links["vxlan0"]["vxlan_local"] == str(testbed.a.vtep)
    assert net_links["vxlan0"]["mtu"] == 1450
    # Nothing floods: the only forwarding entries with a destination are the peers'.
    fdb = run_in(testbed.a.network_ns("net1"), "bridge", "fdb", "show", "dev", "vxlan0").stdout
    remote = [line.replace(" link-netnsid 0", "") for line in fdb.splitlines() if " dst " in line]
    assert remote == [f"{mac_from_ip(eb.address.ip)} dst {testbed.b.vtep} self permanent"], fdb
    assert "00:00:00:00:00:00" not in fdb
    assert await testbed.a.ov.peers("net1") == {peer_of(eb, testbed.b)}


async def test_two_networks_are_isolated(testbed: TwoHosts) -> None:
    n1a, _, _, e1b = await _one_network(testbed, NET1)
    n2a, _, e2a, e2b = await _one_network(testbed, NET2)
    wait_until(lambda: ping(n1a, e1b.address.ip), timeout=5, what="ping on net1")
    wait_until(lambda: ping(n2a, e2b.address.ip), timeout=5, what="ping on net2")

    # net2 is no route away from net1, on the other host or on the same one...
    assert await connect_error(n1a, e2b.address.ip) == "ENETUNREACH"
    assert await connect_error(n1a, e2a.address.ip) == "ENETUNREACH"
    # ...nor a neighbour on the gateway bridge (its ports are isolated, as with enable_icc=false).
    other_gateway = (await testbed.a.ov.sandboxes())["net2-sa"].gateway
    assert other_gateway is not None
    assert not ping(n1a, other_gateway.ip), "sandboxes reached each other over the gateway bridge"

    # Even with an on-link route and net1 entries that point at net2's endpoint, the frames
    # carry net1's VNI and land on net1's bridge at B, never on net2's.
    off_loop(_route_on_link, n1a, NET2.subnet)
    await testbed.a.ov.set_peers("net1", [peer_of(e1b, testbed.b), peer_of(e2b, testbed.b)])
    assert await connect_error(n1a, e2b.address.ip) == "timeout"
    neighbour = run_in(n1a, "ip", "neigh", "show", str(e2b.address.ip)).stdout
    assert mac_from_ip(e2b.address.ip) in neighbour, "the frames were not even sent"


def _route_on_link(ns: Path, subnet: IPv4Network) -> None:
    with ipr_in(ns) as ipr:
        eth0 = ipr.link("get", ifname="eth0")[0]["index"]
        ipr.route("add", dst=str(subnet), oif=eth0, scope=253)


async def test_gateway_bridge_masquerades_outbound_and_internal_has_no_route(testbed: TwoHosts) -> None:
    a, b = testbed.a, testbed.b
    sa, _, ea, _ = await _one_network(testbed, NET1)
    assert default_route(sa) == str(DEFAULT_GATEWAY_SUBNET.network_address + 1)
    gateway = (await a.ov.sandboxes())["net1-sa"].gateway
    assert gateway == IPv4Interface("172.18.0.2/16")
    assert links(sa)["eth1"]["addresses"] == {gateway}

    # "Outside" is host B's underlay address: the sandbox reaches it, masqueraded as host A.
    echoed, seen = await tcp_echo(b.ns, b.vtep, sa, b"hello", port=7001)
    assert (echoed, seen) == (b"hello", str(a.vtep))
    table = run_in(a.ns, "nft", "list", "table", "ip", "shoal-gw")
    assert table.returncode == 0 and "masquerade" in table.stdout, table.stderr

    # An internal-only sandbox has its overlay interface and nothing else: no way out.
    await a.ov.ensure_network(INTERNAL)
    internal = await a.ov.create_sandbox("internal-only")
    await a.ov.attach("internal-only", [endpoint(INTERNAL, 2)])
    assert set(links(internal)) == {"lo", "eth0"}
    assert default_route(internal) is None
    assert await connect_error(internal, b.vtep, port=7001) == "ENETUNREACH"
    assert (await a.ov.sandboxes())["internal-only"].gateway is None

    # One non-internal attachment is enough for a way out; interfaces follow the given order.
    mixed = await a.ov.create_sandbox("mixed")
    await a.ov.attach("mixed", [endpoint(INTERNAL, 3), endpoint(NET1, 4)])
    inside = links(mixed)
    assert inside["eth0"]["addresses"] == {IPv4Interface("10.0.3.3/24")}
    assert inside["eth1"]["addresses"] == {IPv4Interface("10.0.1.4/24")}
    assert inside["eth2"]["addresses"] == {IPv4Interface("172.18.0.3/16")}
    assert default_route(mixed) == "172.18.0.1"
    assert ping(mixed, ea.address.ip)                     # a local neighbour on net1's bridge

    # On no network at all, a sandbox still has a way out (as a Docker task without networks).
    bare = await a.ov.create_sandbox("bare")
    await a.ov.attach("bare", [])
    assert links(bare)["eth0"]["addresses"] == {IPv4Interface("172.18.0.4/16")}
    echoed, seen = await tcp_echo(b.ns, b.vtep, bare, b"out", port=7003)
    assert (echoed, seen) == (b"out", str(a.vtep))


async def test_restart_adopts_everything_without_a_cut(testbed: TwoHosts) -> None:
    a, b = testbed.a, testbed.b
    sa, sb, ea, eb = await _one_network(testbed)
    wait_until(lambda: ping(sa, eb.address.ip), timeout=5, what="ping A→B")
    before = {"sandbox": inode(sa), "inside": links(sa), "net": links(a.network_ns("net1")),
              "home": links(a.ns), "records": await a.ov.sandboxes()}

    loop = asyncio.get_running_loop()
    server, client = socket_in(sb), socket_in(sa)
    with server, client:
        server.bind((str(eb.address.ip), 7002))
        server.listen(1)
        await loop.sock_connect(client, (str(eb.address.ip), 7002))
        conn, _ = await loop.sock_accept(server)
        with conn:
            conn.setblocking(False)
            await a.ov.close()                               # the daemon dies...
            assert ping(sa, eb.address.ip)                   # ...and its containers do not notice
            restarted = await testbed.start(a)
            report = await restarted.adopt()
            assert report.networks == ("net1",)
            assert report.sandboxes == ("net1-sa",)
            assert report.dropped == report.errors == ()
            # What the daemon then does with cluster state changes nothing that exists.
            await restarted.reconcile([NET1])
            await restarted.attach("net1-sa", [ea])
            assert await restarted.set_peers("net1", [peer_of(eb, b)]) == 0

            await loop.sock_sendall(client, b"still there?")
            assert await loop.sock_recv(conn, 100) == b"still there?"

    assert inode(sa) == before["sandbox"]
    assert links(sa) == before["inside"]
    assert links(a.network_ns("net1")) == before["net"]
    assert links(a.ns) == before["home"]
    assert await restarted.sandboxes() == before["records"]
    assert ping(sa, eb.address.ip)


async def test_changed_vtep_recreates_the_vxlan_device_with_its_peers(testbed: TwoHosts) -> None:
    a, b = testbed.a, testbed.b
    sa, sb, ea, eb = await _one_network(testbed)
    wait_until(lambda: ping(sa, eb.address.ip), timeout=5, what="ping A→B")
    old_vxlan = links(a.network_ns("net1"))["vxlan0"]
    sandbox_inode = inode(sa)

    new_vtep = IPv4Address("198.19.0.11")
    off_loop(_add_address, a.ns, IPv4Interface(f"{new_vtep}/24"))
    await a.ov.close()
    restarted = await testbed.start(a, vtep=new_vtep)
    await restarted.adopt()
    vxlan = links(a.network_ns("net1"))["vxlan0"]
    assert vxlan["vxlan_local"] == str(new_vtep)
    assert vxlan["index"] != old_vxlan["index"]
    assert vxlan["master"] == old_vxlan["master"]
    assert await restarted.peers("net1") == {peer_of(eb, b)}      # carried over
    assert inode(sa) == sandbox_inode

    # B learns A's new address from the cluster (here: from the test) and traffic flows again.
    a.vtep = new_vtep
    await b.ov.set_peers("net1", [peer_of(ea, a)])
    wait_until(lambda: ping(sa, eb.address.ip), timeout=5, what="ping A→B after the VTEP moved")
    assert ping(sb, ea.address.ip)

    # The same at run time, without a restart.
    await restarted.set_local_vtep(IPv4Address("198.19.0.1"))
    a.vtep = IPv4Address("198.19.0.1")
    await b.ov.set_peers("net1", [peer_of(ea, a)])
    assert links(a.network_ns("net1"))["vxlan0"]["vxlan_local"] == "198.19.0.1"
    wait_until(lambda: ping(sa, eb.address.ip), timeout=5, what="ping A→B after set_local_vtep")


def _add_address(ns: Path, address: IPv4Interface) -> None:
    with ipr_in(ns) as ipr:
        eth0 = ipr.link("get", ifname="eth0")[0]["index"]
        ipr.addr("add", index=eth0, address=str(address.ip), prefixlen=address.network.prefixlen)


async def test_stale_peers_removed_stop_traffic(testbed: TwoHosts) -> None:
    a, b = testbed.a, testbed.b
    sa, _, _, eb = await _one_network(testbed)
    wait_until(lambda: ping(sa, eb.address.ip), timeout=5, what="ping A→B")

    assert await a.ov.set_peers("net1", []) == 2              # one neighbour, one forwarding entry
    assert await a.ov.peers("net1") == set()
    assert not ping(sa, eb.address.ip)

    assert await a.ov.set_peers("net1", [peer_of(eb, b)]) == 2
    wait_until(lambda: ping(sa, eb.address.ip), timeout=5, what="ping A→B with the peer back")

    moved = Peer(eb.address.ip, mac_from_ip(eb.address.ip), IPv4Address("198.19.0.99"))
    assert await a.ov.set_peers("net1", [moved]) == 2        # the old destination out, the new in
    assert await a.ov.peers("net1") == {moved}
    assert not ping(sa, eb.address.ip)
    assert await a.ov.set_peers("net1", [moved]) == 0        # idempotent


async def test_detach_delete_and_remove_leave_nothing(testbed: TwoHosts) -> None:
    a, b = testbed.a, testbed.b
    sa, _, ea, eb = await _one_network(testbed)
    wait_until(lambda: ping(sa, eb.address.ip), timeout=5, what="ping A→B")

    await a.ov.detach("net1-sa")
    await a.ov.detach("net1-sa")
    assert set(links(sa)) == {"lo"}
    assert not [name for name in links(a.ns) if name.startswith("shoalg")]
    assert not [name for name in links(a.network_ns("net1")) if name.startswith("ve")]
    assert (await a.ov.sandboxes())["net1-sa"].gateway is None

    await a.ov.attach("net1-sa", [ea])                        # attach again: same address back
    assert (await a.ov.sandboxes())["net1-sa"].gateway == IPv4Interface("172.18.0.2/16")
    wait_until(lambda: ping(sa, eb.address.ip), timeout=5, what="ping A→B after re-attach")

    await a.ov.delete_sandbox("net1-sa")
    await a.ov.delete_sandbox("net1-sa")
    assert not sa.exists()
    assert "net1-sa" not in await a.ov.sandboxes()
    assert not [name for name in links(a.ns) if name.startswith("shoalg")]

    await a.ov.remove_network("net1")
    await a.ov.remove_network("net1")
    assert not a.network_ns("net1").exists()
    assert not [n for n, link in links(a.ns).items() if link["kind"] == "vxlan"]
    await a.ov.ensure_network(NET1)                           # its VXLAN id is free at once

    with pytest.raises(OverlayError, match="does not exist"):
        await a.ov.attach("nobody", [ea])
    with pytest.raises(OverlayError, match="not set up"):
        await a.ov.set_peers("net9", [])

    await b.ov.purge()
    assert not any((b.run_dir / "netns").iterdir())
    assert "shoal_gwbridge" not in links(b.ns)
    assert run_in(b.ns, "nft", "list", "table", "ip", "shoal-gw").returncode != 0


async def test_reconcile_and_adopt_drop_what_is_no_longer_wanted(testbed: TwoHosts) -> None:
    a = testbed.a
    await a.ov.ensure_network(NET1)
    await a.ov.ensure_network(NET2)
    kept = links(a.network_ns("net2"))["vxlan0"]["index"]
    await a.ov.reconcile([NET2])
    assert set(await a.ov.networks()) == {"net2"}
    assert not a.network_ns("net1").exists()
    assert links(a.network_ns("net2"))["vxlan0"]["index"] == kept

    # Leftovers of a crash: a network record without its namespace, a sandbox record without
    # its namespace, a VXLAN device that never made it into its network's namespace.
    await a.ov.close()
    (a.run_dir / "networks" / "net7.json").write_text(
        '{"network_id": "net7", "vni": 4103, "subnet": "10.0.7.0/24", "gateway": "10.0.7.1",'
        ' "mtu": 1450, "internal": false}')
    (a.run_dir / "sandboxes" / "gone.json").write_text(
        '{"key": "gone", "attachments": [], "gateway": "172.18.0.9/16", "gateway_ifname": "eth1"}')
    assert run_in(a.ns, "ip", "link", "add", "shoalx001007", "type", "vxlan", "id", "4103",
                  "dstport", "4789").returncode == 0
    restarted = await testbed.start(a)
    report = await restarted.adopt()
    assert report.networks == ("net2",)
    assert set(report.dropped) == {"device shoalx001007", "network net7", "sandbox gone"}
    assert "shoalx001007" not in links(a.ns)
    assert await restarted.sandboxes() == {}


async def test_hundreds_of_peers_go_in_batches_and_read_back_with_iproute2(testbed: TwoHosts) -> None:
    a = testbed.a
    wide = OverlaySpec("wide", 4200, IPv4Network("10.1.0.0/16"), IPv4Address("10.1.0.1"))
    await a.ov.ensure_network(wide)
    vteps = [IPv4Address(f"198.19.0.{n}") for n in (2, 3, 4)]
    hosts = list(wide.subnet.hosts())[1:601]
    peers = [Peer(ip, mac_from_ip(ip), vteps[i % 3]) for i, ip in enumerate(hosts)]
    assert await a.ov.set_peers("wide", peers) == 1200          # more than one batch of each kind
    assert await a.ov.set_peers("wide", peers) == 0

    ns = a.network_ns("wide")
    neigh = [line.strip() for line in
             run_in(ns, "ip", "neigh", "show", "dev", "vxlan0", "nud", "permanent").stdout.splitlines()]
    fdb = [line for line in run_in(ns, "bridge", "fdb", "show", "dev", "vxlan0").stdout.splitlines()
           if " dst " in line]
    assert len(neigh) == 600 and len(fdb) == 600
    assert f"{hosts[4]} lladdr {mac_from_ip(hosts[4])} PERMANENT" in neigh
    assert any(line.startswith(f"{mac_from_ip(hosts[4])} dst {vteps[1]} ") for line in fdb)
    assert await a.ov.peers("wide") == set(peers)

    assert await a.ov.set_peers("wide", peers[:100]) == 1000
    assert len(run_in(ns, "ip", "neigh", "show", "dev", "vxlan0", "nud", "permanent").stdout.splitlines()) == 100
    assert await a.ov.peers("wide") == set(peers[:100])


async def test_a_vxlan_device_lost_behind_our_back_fails_loudly_and_is_repaired(testbed: TwoHosts) -> None:
    a = testbed.a
    await a.ov.ensure_network(NET1)
    first, second = (Peer(ip, mac_from_ip(ip), testbed.b.vtep)
                     for ip in (IPv4Address("10.0.1.7"), IPv4Address("10.0.1.8")))
    assert await a.ov.set_peers("net1", [first]) == 2
    assert run_in(a.network_ns("net1"), "ip", "link", "del", "vxlan0").returncode == 0

    with pytest.raises(OSError, match=r"neigh replace 10\.0\.1\.8 .*: No such device"):
        await a.ov.set_peers("net1", [first, second])
    await a.ov.ensure_network(NET1)                       # what the daemon's reconcile does
    assert await a.ov.set_peers("net1", [first, second]) == 4    # from the kernel, not the cache
    assert await a.ov.peers("net1") == {first, second}
