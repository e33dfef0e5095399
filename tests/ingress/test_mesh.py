"""The routing mesh on the real kernel: two nodes, each with an ingress namespace, two tasks on
the ingress network, a client outside.

  under (192.0.2.0/24):   cl 192.0.2.100, n1 192.0.2.1, n2 192.0.2.2       (the nodes' underlay)
  nK ↔ iK:                gw0 172.18.0.1/24 ↔ eth1 172.18.0.2/24           (docker_gwbridge's stand-in)
  ingr (10.255.0.0/16):   i1 10.255.0.2, i2 10.255.0.3 (MAC 02:42+IP), t1 10.255.0.10, t2 10.255.0.11
  gwb (172.19.0.0/24):    t1 172.19.0.10, t2 172.19.0.11 on eth1, default route via 172.19.0.1
Tasks: HTTP on 80 (published as 8080) and 7777 (not published), UDP echo on 5353 (published
as 5353). Their default route leads nowhere (as a task's docker_gwbridge would lead out of the
node, not back to the client's node): a reply reaches a client only if it goes back through
the ingress namespace the connection came by (or if that namespace SNATed it).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from ingress.dataplane import (
    ClientAddress,
    IngressBackend,
    IngressDataPlane,
    IngressNode,
    Mesh,
    PublishedPort,
    TaskIngress,
    mac_from_ip,
)
from ingress.dataplane.plan import table_names
from node.balancing import wanted_mesh
from tests.ingress.support import (
    Http,
    Net,
    connect_error,
    fetch,
    needs_root_and_tools,
    nft_ruleset,
    sh,
    socket_in,
    udp_ask,
)
from worker.networking import NetworkView

pytestmark = [pytest.mark.lab, needs_root_and_tools()]

CLIENT = "192.0.2.100"
NODE = {1: "192.0.2.1", 2: "192.0.2.2"}
INGRESS = {1: IPv4Address("10.255.0.2"), 2: IPv4Address("10.255.0.3")}
SANDBOX = IPv4Address("172.18.0.2")
HOST_SIDE = "172.18.0.1"
TASK = {"t1": IPv4Address("10.255.0.10"), "t2": IPv4Address("10.255.0.11")}
NODES = tuple(IngressNode(a) for a in INGRESS.values())


@dataclass
class Bed:
    net: Net
    cl: str
    n: dict[int, str]
    i: dict[int, str]
    t: dict[str, str]
    dp: dict[int, IngressDataPlane]

    def path(self, ns: str) -> str:
        return self.net.path(ns)


@pytest.fixture
async def bed(net: Net):
    sw = net.ns("sw")
    net.bridge(sw, "under")
    net.bridge(sw, "ingr")
    net.bridge(sw, "gwb")
    cl = net.ns("cl")
    net.plug(cl, "eth0", f"{CLIENT}/24", sw, "under")
    n, i, t = {}, {}, {}
    for k in (1, 2):
        n[k], i[k] = net.ns(f"n{k}"), net.ns(f"i{k}")
        net.plug(n[k], "eth0", f"{NODE[k]}/24", sw, "under")
        net.link(n[k], "gw0", f"{HOST_SIDE}/24", i[k], "eth1", f"{SANDBOX}/24")
        net.plug(i[k], "eth0", f"{INGRESS[k]}/16", sw, "ingr", mac=mac_from_ip(INGRESS[k]))
        sh("ip", "-n", i[k], "route", "add", "default", "via", HOST_SIDE)
    for name, addr in TASK.items():
        t[name] = net.ns(name)
        net.plug(t[name], "eth0", f"{addr}/16", sw, "ingr", mac=mac_from_ip(addr))
        net.plug(t[name], "eth1", f"172.19.0.{int(addr) & 0xff}/24", sw, "gwb")
        sh("ip", "-n", t[name], "route", "add", "default", "via", "172.19.0.1")
        net.backend(t[name], name, tcp=(80, 7777), udp=(5353,))
    dp = {k: IngressDataPlane(net.path(n[k])) for k in (1, 2)}
    try:
        yield Bed(net, cl, n, i, t, dp)
    finally:
        for plane in dp.values():
            await plane.close()


def mesh(k: int, *ports: PublishedPort, mode: ClientAddress = ClientAddress.PRESERVE) -> Mesh:
    return Mesh(INGRESS[k], SANDBOX, "gw0", ports, mode)


def web(*names: str, draining: tuple[str, ...] = ()) -> PublishedPort:
    return PublishedPort("tcp", 8080, tuple(IngressBackend(TASK[n], 80) for n in names),
                         tuple(IngressBackend(TASK[n], 80) for n in draining))


def dns(*names: str) -> PublishedPort:
    return PublishedPort("udp", 5353, tuple(IngressBackend(TASK[n], 5353) for n in names))


def task(name: str, nodes: tuple[IngressNode, ...] = NODES) -> TaskIngress:
    return TaskIngress("eth0", TASK[name], (("tcp", 80), ("udp", 5353)), nodes)


async def program(bed: Bed, *ports: PublishedPort, mode: ClientAddress = ClientAddress.PRESERVE) -> None:
    nodes = NODES if mode is ClientAddress.PRESERVE else ()
    await bed.dp[1].set_task("t1", bed.path(bed.t["t1"]), task("t1", nodes))
    await bed.dp[2].set_task("t2", bed.path(bed.t["t2"]), task("t2", nodes))
    for k in (1, 2):
        applied = await bed.dp[k].set_mesh(bed.path(bed.i[k]), mesh(k, *ports, mode=mode))
        assert applied.unreserved == ()


def bind_error(ns: str, kind: int, port: int) -> str:
    with socket_in(ns, kind) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            return errno.errorcode[exc.errno or 0]
    return "bound"


async def test_a_published_port_answers_on_every_node_with_the_clients_own_address(bed: Bed) -> None:
    await program(bed, web("t1", "t2"), dns("t1", "t2"))
    for k in (1, 2):
        seen = [await fetch(bed.cl, NODE[k], 8080) for _ in range(4)]
        assert sorted(name for name, _ in seen) == ["t1", "t1", "t2", "t2"], (k, seen)
        assert {peer for _, peer in seen} == {CLIENT}, "the task sees the client, through either node"
        udp = [await udp_ask(bed.cl, NODE[k], 5353) for _ in range(4)]
        assert sorted(name for name, _ in udp) == ["t1", "t1", "t2", "t2"], (k, udp)
        assert {peer for _, peer in udp} == {CLIENT}

    # From the node itself: localhost:P and its own address (masqueraded on the way in).
    for target in ("127.0.0.1", NODE[1]):
        seen = [await fetch(bed.n[1], target, 8080) for _ in range(2)]
        assert sorted(name for name, _ in seen) == ["t1", "t2"], (target, seen)
        assert {peer for _, peer in seen} == {HOST_SIDE}
    assert (await udp_ask(bed.n[2], "127.0.0.1", 5353))[0] in {"t1", "t2"}

    # The ports are held on each node: nothing else binds them.
    for k in (1, 2):
        assert bind_error(bed.n[k], socket.SOCK_STREAM, 8080) == "EADDRINUSE"
        assert bind_error(bed.n[k], socket.SOCK_DGRAM, 5353) == "EADDRINUSE"
        assert bed.dp[k].reserved() == {("tcp", 8080), ("udp", 5353)}
    assert await connect_error(bed.cl, NODE[1], 8081) == "ECONNREFUSED", "an unpublished port"

    # On the ingress network, a task takes only its published target ports.
    assert await connect_error(bed.i[1], str(TASK["t1"]), 80) == "connected"
    assert await connect_error(bed.i[1], str(TASK["t1"]), 7777) == "timeout"

    # Reply routing by connection mark is what carries the client address: without the task's
    # side, a reply has no way back and the connection never opens.
    await bed.dp[2].set_task("t2", bed.path(bed.t["t2"]), task("t2", nodes=()))
    outcomes = {await connect_error(bed.cl, NODE[2], 8080) for _ in range(4)}
    assert outcomes == {"connected", "timeout"}, outcomes
    await bed.dp[2].set_task("t2", bed.path(bed.t["t2"]), task("t2"))
    assert {(await fetch(bed.cl, NODE[2], 8080))[0] for _ in range(4)} == {"t1", "t2"}


async def test_snat_fallback_needs_no_task_side_and_shows_the_ingress_endpoint(bed: Bed) -> None:
    await program(bed, web("t1", "t2"), mode=ClientAddress.SNAT)
    for k in (1, 2):
        seen = [await fetch(bed.cl, NODE[k], 8080) for _ in range(4)]
        assert sorted(name for name, _ in seen) == ["t1", "t1", "t2", "t2"], (k, seen)
        assert {peer for _, peer in seen} == {str(INGRESS[k])}

    # Switching modes is one rule in the ingress namespace; connections open meanwhile survive.
    conn = await Http.open(bed.cl, NODE[1], 8080)
    try:
        before = await conn.get()
        await bed.dp[1].set_task("t1", bed.path(bed.t["t1"]), task("t1"))
        await bed.dp[2].set_task("t2", bed.path(bed.t["t2"]), task("t2"))
        applied = await bed.dp[1].set_mesh(bed.path(bed.i[1]), mesh(1, web("t1", "t2")))
        assert "snat" not in applied.script and "pb-" not in applied.script, applied.script
        assert await conn.get() == before
        assert {peer for _, peer in [await fetch(bed.cl, NODE[1], 8080) for _ in range(2)]} == {CLIENT}
    finally:
        conn.close()


async def test_mesh_drain_keeps_connections_and_removal_resets_them(bed: Bed) -> None:
    await program(bed, web("t1", "t2"))
    conn = await Http.open(bed.cl, NODE[2], 8080)
    try:
        first, _ = await conn.get()
        other = "t2" if first == "t1" else "t1"
        for k in (1, 2):
            applied = await bed.dp[k].set_mesh(bed.path(bed.i[k]), mesh(k, web(other, draining=(first,))))
            assert applied.flushed == 0 and applied.commands <= 4, applied.script
        assert (await conn.get())[0] == first
        for k in (1, 2):
            assert {(await fetch(bed.cl, NODE[k], 8080))[0] for _ in range(3)} == {other}

        flushed = 0
        for k in (1, 2):
            flushed += (await bed.dp[k].set_mesh(bed.path(bed.i[k]), mesh(k, web(other)))).flushed
        assert flushed >= 1
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await conn.get(timeout=5)
    finally:
        conn.close()


async def test_a_restarted_daemon_adopts_the_mesh_and_removal_frees_the_port(bed: Bed) -> None:
    await program(bed, web("t1", "t2"), dns("t1"))
    conn = await Http.open(bed.cl, NODE[1], 8080)
    try:
        name, _ = await conn.get()
        await bed.dp[1].close()                       # the daemon dies: its sockets go, the tables stay
        assert bind_error(bed.n[1], socket.SOCK_STREAM, 8080) == "bound"
        assert (await conn.get())[0] == name

        bed.dp[1] = IngressDataPlane(bed.path(bed.n[1]))
        applied = await bed.dp[1].set_mesh(bed.path(bed.i[1]), mesh(1, web("t1", "t2"), dns("t1")))
        assert "pb-" not in applied.script and "add element" not in applied.script, applied.script
        assert applied.flushed == 0 and applied.unreserved == ()
        assert bind_error(bed.n[1], socket.SOCK_STREAM, 8080) == "EADDRINUSE"
        task_applied = await bed.dp[1].set_task("t1", bed.path(bed.t["t1"]), task("t1"))
        assert "add element" not in task_applied.script, task_applied.script
        assert (await conn.get())[0] == name
    finally:
        conn.close()

    await bed.dp[1].remove_mesh(bed.path(bed.i[1]))
    assert table_names()["publish"] not in nft_ruleset(bed.n[1])
    assert table_names()["mesh"] not in nft_ruleset(bed.i[1])
    assert bind_error(bed.n[1], socket.SOCK_STREAM, 8080) == "bound"
    assert await connect_error(bed.cl, NODE[1], 8080) == "ECONNREFUSED"
    assert (await fetch(bed.cl, NODE[2], 8080))[0] in {"t1", "t2"}, "the other node still serves"

    await bed.dp[1].remove_task("t1", bed.path(bed.t["t1"]))
    assert table_names()["task"] not in nft_ruleset(bed.t["t1"])
    assert "lookup" not in sh("ip", "-n", bed.t["t1"], "rule", "list").replace("lookup local", "").replace(
        "lookup main", "").replace("lookup default", "")


async def test_a_restarted_daemon_drains_what_left_rotation_while_it_was_down(bed: Bed) -> None:
    """The node's balancing drains a backend that leaves rotation while its endpoint lives
    (node/balancing.py); a restarted daemon has no memory of the last rotation, so it asks the
    kernel what the mesh held: a task that left while the daemon was down drains (its open
    connection runs on) instead of being cut."""
    await program(bed, web("t1", "t2"))
    conn = await Http.open(bed.cl, NODE[1], 8080)
    try:
        first, _ = await conn.get()
        other = "t2" if first == "t1" else "t1"
        await bed.dp[1].close()                        # the daemon dies; `first` leaves rotation meanwhile
        bed.dp[1] = IngressDataPlane(bed.path(bed.n[1]))
        held = await bed.dp[1].held_mesh(bed.path(bed.i[1]))
        assert held == {("tcp", 8080): frozenset(IngressBackend(TASK[n], 80) for n in ("t1", "t2"))}
        view = NetworkView.from_wire({
            "id": "ingress", "name": "ingress", "vni": 4096, "subnet": "10.255.0.0/16", "gateway": "10.255.0.1",
            "ingress": True, "node_address": f"{INGRESS[1]}/16", "services": [
                {"name": "web", "id": "web", "vip": "10.255.0.5", "ports": [
                    {"protocol": "tcp", "published": 8080, "target": 80}],
                 "tasks": [{"name": "web.1", "id": other, "address": str(TASK[other])}]}]})
        want = wanted_mesh(view, SANDBOX, "gw0", held, alive={TASK["t1"], TASK["t2"]})
        assert want is not None and want.by_key()[("tcp", 8080)].draining == (IngressBackend(TASK[first], 80),)
        applied = await bed.dp[1].set_mesh(bed.path(bed.i[1]), want)
        assert applied.flushed == 0
        assert (await conn.get())[0] == first           # its open connection runs on
        assert {(await fetch(bed.cl, NODE[1], 8080))[0] for _ in range(3)} == {other}
        assert await bed.dp[1].held_mesh(bed.path(bed.i[1])) == held
    finally:
        conn.close()
