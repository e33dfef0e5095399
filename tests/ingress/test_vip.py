"""Service VIPs on the real kernel: an LB namespace between a client task and two backends.

Topology (all on one bridge, the stand-in for an overlay network 10.0.0.0/16):
  c   (client task)   10.0.0.9
  lb  (the node's LB namespace for the network, its endpoint) 10.0.0.2 on eth0
  b1, b2 (backend tasks) 10.0.0.7, 10.0.0.8: HTTP on 80, 8080, 7777; UDP echo on 5353
The IngressDataPlane programs `lb` (the VIP /32 aliases and table shoal-lb) and, in the tests of
the client's own table, `c` (table shoal-vip).
"""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from ingress.dataplane import Applied, IngressDataPlane, LbNetwork, TaskVips, VipService, kernel
from ingress.dataplane.plan import table_names
from tests.ingress.support import (
    Http,
    Net,
    connect_error,
    fetch,
    needs_root_and_tools,
    netns_fd,
    nft_ruleset,
    ping,
    sh,
    socket_in,
    udp_ask,
)

pytestmark = [pytest.mark.lab, needs_root_and_tools()]

LB = IPv4Address("10.0.0.2")
CLIENT = "10.0.0.9"
B1, B2 = IPv4Address("10.0.0.7"), IPv4Address("10.0.0.8")
VIP = IPv4Address("10.0.1.5")
NAMES = {"b1": B1, "b2": B2}
PORTS = (80, 8080, 7777)


@dataclass
class Bed:
    net: Net
    lb: str
    c: str

    @property
    def lb_path(self) -> str:
        return self.net.path(self.lb)


@pytest.fixture
def bed(net: Net) -> Bed:
    sw = net.ns("sw")
    net.bridge(sw, "br0")
    lb = net.ns("lb")
    net.plug(lb, "eth0", f"{LB}/16", sw, "br0")
    c = net.ns("c")
    net.plug(c, "eth0", f"{CLIENT}/16", sw, "br0")
    for name, addr in NAMES.items():
        ns = net.ns(name)
        net.plug(ns, "eth0", f"{addr}/16", sw, "br0")
        net.backend(ns, name, tcp=PORTS, udp=(5353,))
    return Bed(net, lb, c)


def lb(*services: VipService) -> LbNetwork:
    return LbNetwork(LB, "eth0", services)


async def test_vip_balances_every_port_over_its_backends_and_answers_ping(bed: Bed) -> None:
    dp = IngressDataPlane()
    await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1, B2)), VipService(IPv4Address("10.0.1.6"))))
    for port in PORTS:
        seen = [await fetch(bed.c, str(VIP), port) for _ in range(4)]
        assert sorted(name for name, _ in seen) == ["b1", "b1", "b2", "b2"], (port, seen)
        assert {peer for _, peer in seen} == {str(LB)}, "the backend sees the node's LB address (SNAT)"
    udp = [await udp_ask(bed.c, str(VIP), 5353) for _ in range(4)]
    assert sorted(name for name, _ in udp) == ["b1", "b1", "b2", "b2"], udp
    assert ping(bed.c, str(VIP)), "ICMP echo to a VIP is answered"
    assert ping(bed.c, "10.0.1.6"), "even with no backends"
    assert await connect_error(bed.c, "10.0.1.6", 80) == "ECONNREFUSED", "no backend: refused at once"
    assert not ping(bed.c, "10.0.1.99"), "not a VIP"

    # The same wanted state again changes nothing.
    again = await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1, B2)), VipService(IPv4Address("10.0.1.6"))))
    assert again == Applied()


async def test_draining_keeps_open_connections_and_removal_resets_them(bed: Bed) -> None:
    dp = IngressDataPlane()
    await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1, B2))))
    conn = await Http.open(bed.c, str(VIP), 80)
    try:
        first, _ = await conn.get()
        other = "b2" if first == "b1" else "b1"
        leaving = NAMES[first]

        applied = await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (NAMES[other],), (leaving,))))
        assert applied.flushed == 0
        # The rotation shrinks in place: a map element moves, the one rule gets modulus 1.
        assert applied.commands <= 4, applied.script
        assert (await conn.get())[0] == first, "an open connection keeps its backend while it drains"
        assert {(await fetch(bed.c, str(VIP), 80))[0] for _ in range(4)} == {other}, "no new ones"

        applied = await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (NAMES[other],))))
        assert applied.flushed >= 1
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await conn.get(timeout=5)                 # a reset, not a hang (timeout would fail the test)
    finally:
        conn.close()

    # Back in rotation: new connections reach it again.
    await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1, B2))))
    assert {(await fetch(bed.c, str(VIP), 8080))[0] for _ in range(4)} == {"b1", "b2"}


async def test_a_restarted_daemon_adopts_the_tables_and_flushes_what_left_meanwhile(bed: Bed) -> None:
    first_life = IngressDataPlane()
    other_vip = VipService(IPv4Address("10.0.1.6"), (B1,))
    await first_life.set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1, B2)), other_vip))
    conn = await Http.open(bed.c, str(VIP), 80)
    try:
        name, _ = await conn.get()
        other = "b2" if name == "b1" else "b1"
        draining = lb(VipService(VIP, (NAMES[other],), (NAMES[name],)), other_vip)
        await first_life.set_lb("net1", bed.lb_path, draining)

        # A new life reads the tables back: what each VIP held, draining included (what the
        # node's balancing drains on from, node/balancing.py); only the fixed rules are
        # rewritten, nothing cut.
        second_life = IngressDataPlane()
        assert await second_life.held_lb("net1", bed.lb_path) == {VIP: frozenset((B1, B2)),
                                                                    other_vip.vip: frozenset((B1,))}
        applied = await second_life.set_lb("net1", bed.lb_path, draining)
        assert applied.flushed == 0
        assert not [line for line in applied.script.splitlines()
                    if re.match(r"(add|delete) (element|map|chain)", line)], applied.script
        assert (await conn.get())[0] == name

        # Another life, told that the draining backend is gone for good and a VIP removed.
        third_life = IngressDataPlane()
        applied = await third_life.set_lb("net1", bed.lb_path, lb(VipService(VIP, (NAMES[other],))))
        assert applied.flushed >= 1
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await conn.get(timeout=5)
    finally:
        conn.close()
    assert "10.0.1.6" not in sh("ip", "-n", bed.lb, "address", "show", "dev", "eth0")
    assert not ping(bed.c, "10.0.1.6")

    # A table in a shape this code never writes is rewritten whole, in one transaction.
    table = table_names()["lb"]
    sh("ip", "netns", "exec", bed.lb, "nft", "add", "chain", "ip", table, "v-deadbeef")
    applied = await IngressDataPlane().set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1, B2))))
    assert applied.script.startswith(f"table ip {table} {{}}\ndelete table ip {table}\n")
    assert "v-deadbeef" not in nft_ruleset(bed.lb)
    assert {(await fetch(bed.c, str(VIP), 80))[0] for _ in range(4)} == {"b1", "b2"}

    await third_life.remove_lb("net1", bed.lb_path, "eth0")
    assert table not in nft_ruleset(bed.lb)
    assert not ping(bed.c, str(VIP))


def _vips(n: int) -> list[IPv4Address]:
    return [IPv4Address(int(IPv4Address("10.0.4.0")) + i) for i in range(n)]


async def _traced_path(bed: Bed, vip: IPv4Address) -> list[str]:
    """The rules of table shoal-lb that the first packet of one connection to `vip` went
    through, from `nft monitor trace` (a probe is repeated until the monitor has seen one)."""
    sh("ip", "netns", "exec", bed.lb, "nft", "-f", "-", input=(
        "table ip trace {}\ndelete table ip trace\n"
        "table ip trace { chain pre { type filter hook prerouting priority -350; "
        f"ip daddr {vip} tcp flags syn meta nftrace set 1; }}; }}\n"))
    proc = await asyncio.create_subprocess_exec("ip", "netns", "exec", bed.lb, "nft", "monitor", "trace",
                                                stdout=asyncio.subprocess.PIPE)
    lines: list[str] = []
    done = asyncio.Event()

    async def reader() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode()
            lines.append(line)
            if re.search(r"ip shoal-lb post (rule|policy)", line):
                done.set()

    try:
        async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
            task = tg.create_task(reader())
            while not done.is_set():
                await fetch(bed.c, str(vip), 80)
                try:
                    async with asyncio.timeout(0.5):
                        await done.wait()
                except TimeoutError:
                    continue               # the monitor was not listening yet: probe again
            task.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        sh("ip", "netns", "exec", bed.lb, "nft", "delete", "table", "ip", "trace", check=False)
    ids = [m.group(1) for line in lines if (m := re.match(r"trace id (\w+) ip shoal-lb post", line))]
    return [line.split(" ", 3)[3].strip() for line in lines
            if line.startswith(f"trace id {ids[0]} ip shoal-lb") and " rule " in line]


async def test_a_thousand_services_leave_the_packet_path_unchanged(bed: Bed) -> None:
    dp = IngressDataPlane()
    await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1, B2))))
    one = await _traced_path(bed, VIP)
    assert len(one) == 3, one          # vip verdict map → the service's dnat → snat

    many = [VipService(v, (B1, B2)) for v in _vips(1000)]
    applied = await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1, B2)), *many))
    assert applied.commands == 4 * 1000 + 1      # map, chain, elements, rule per service; one vmap batch
    thousand = await _traced_path(bed, VIP)
    assert [re.sub(r"\(verdict.*", "", r) for r in thousand] == [re.sub(r"\(verdict.*", "", r) for r in one]
    assert (await fetch(bed.c, str(_vips(1000)[-1]), 7777))[0] in {"b1", "b2"}

    ruleset = nft_ruleset(bed.lb)
    pre = re.search(r"chain pre \{(.*?)\n\t\}", ruleset, re.S)
    assert pre and pre.group(1).count("\n\t\t") == 2, "one hook line and one rule, whatever the count"

    # One service's change is a couple of commands, whatever the number of services.
    many[500] = VipService(many[500].vip, (B2,), (B1,))
    applied = await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1, B2)), *many))
    assert applied.commands <= 4, applied.script
    assert all(f"{int(many[500].vip):08x}" in line for line in applied.script.splitlines()), applied.script


# ---------------------------------------------------------------- the client's own table


async def test_a_tasks_own_table_balances_its_connections_and_the_backend_sees_its_address(bed: Bed) -> None:
    dp = IngressDataPlane()
    other = VipService(IPv4Address("10.0.1.6"))
    await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1, B2)), other))
    before = await Http.open(bed.c, str(VIP), 80)      # opened through the LB namespace
    try:
        name, peer = await before.get()
        assert peer == str(LB)
        await dp.set_vips("c", bed.net.path(bed.c), TaskVips((VipService(VIP, (B1, B2)), other)))
        for port in PORTS:
            seen = [await fetch(bed.c, str(VIP), port) for _ in range(4)]
            assert sorted(n for n, _ in seen) == ["b1", "b1", "b2", "b2"], (port, seen)
            assert {p for _, p in seen} == {CLIENT}, "the backend sees the task's own address"
        udp = [await udp_ask(bed.c, str(VIP), 5353) for _ in range(4)]
        assert sorted(n for n, _ in udp) == ["b1", "b1", "b2", "b2"] and {p for _, p in udp} == {CLIENT}, udp
        assert (await before.get()) == (name, str(LB)), "a connection opened before the table goes on as it was"
    finally:
        before.close()
    assert ping(bed.c, str(VIP)), "ping is answered by the LB namespace's alias"
    assert await connect_error(bed.c, "10.0.1.6", 80) == "ECONNREFUSED", "no backend: refused at once"
    assert "snat" not in nft_ruleset(bed.c) and "masquerade" not in nft_ruleset(bed.c)
    again = await dp.set_vips("c", bed.net.path(bed.c), TaskVips((VipService(VIP, (B1, B2)), other)))
    assert again == Applied()


async def test_a_tasks_own_table_drains_resets_and_is_adopted_after_a_restart(bed: Bed) -> None:
    client = bed.net.path(bed.c)
    first_life = IngressDataPlane()

    async def both(dp: IngressDataPlane, *services: VipService) -> Applied:
        """As a node does: the network's LB namespace, then the task's own table, the same VIPs."""
        await dp.set_lb("net1", bed.lb_path, lb(*services))
        return await dp.set_vips("c", client, TaskVips(services))

    await both(first_life, VipService(VIP, (B1, B2)))
    conn = await Http.open(bed.c, str(VIP), 80)
    try:
        name, peer = await conn.get()
        assert peer == CLIENT
        other = "b2" if name == "b1" else "b1"
        draining = VipService(VIP, (NAMES[other],), (NAMES[name],))
        applied = await both(first_life, draining)
        assert applied.flushed == 0 and applied.commands <= 4, applied.script
        assert (await conn.get())[0] == name, "an open connection keeps its backend while it drains"
        assert {(await fetch(bed.c, str(VIP), 80))[0] for _ in range(4)} == {other}, "no new ones"

        # A new life reads the table back and changes nothing; told the backend is gone, it cuts.
        second_life = IngressDataPlane()
        applied = await both(second_life, draining)
        assert applied.flushed == 0
        assert not [line for line in applied.script.splitlines()
                    if re.match(r"(add|delete) (element|map|chain)", line)], applied.script
        assert (await conn.get())[0] == name
        applied = await both(second_life, VipService(VIP, (NAMES[other],)))
        assert applied.flushed >= 1
        # The connection's next packet is no SYN, so the task's table lets it go on to the VIP:
        # the LB namespace picks it up and sends it to a backend, which resets it.
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await conn.get(timeout=5)                 # a reset, not a hang
    finally:
        conn.close()

    # No VIP wanted: nothing is balanced in the task any more.
    await second_life.set_vips("c", client, TaskVips())
    assert "vb-" not in nft_ruleset(bed.c)

    # A namespace without the table, and none wanted: nothing is written.
    fresh = IngressDataPlane()
    sh("ip", "netns", "exec", bed.c, "nft", "delete", "table", "ip", table_names()["vip"])
    assert await fresh.set_vips("c", client, TaskVips()) == Applied()
    assert table_names()["vip"] not in nft_ruleset(bed.c)


def syn_retransmissions(ns: str) -> int:
    lines = [line.split() for line in sh("ip", "netns", "exec", ns, "cat", "/proc/net/netstat").splitlines()
             if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["TCPSynRetrans"])


async def closed_by_the_server(ns: str, host: str, source_port: int) -> None:
    """A connection from `source_port` that the server closes first: its side keeps a TIME_WAIT."""
    sock = socket_in(ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", source_port))
    async with asyncio.timeout(10):
        await asyncio.get_running_loop().sock_connect(sock, (host, 80))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"QUIT\r\n\r\n")              # backend.py closes on anything but GET
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()


async def test_one_source_port_used_straight_and_through_the_vip_meets_no_retransmission(bed: Bed) -> None:
    """The backend's TIME_WAIT of a connection that came straight (or through the VIP) takes the
    next SYN from the same address and port through the VIP (or straight) at once: the task's
    timestamps do not depend on the address it connected to. The task's conntrack would move
    the second connection to another port while it remembers the first; under a high rate of new
    connections it runs out of ports and reuses a TIME_WAIT entry's (this kernel's NAT does), as
    here, where the entry is deleted. With a timestamp offset per address pair, one of the two
    orders meets the backend's PAWS check and waits out a SYN retransmission (1 s): measured as
    new connections collapsing to a third when a task mixes the two at ~10k/s."""
    dp = IngressDataPlane()
    await dp.set_lb("net1", bed.lb_path, lb(VipService(VIP, (B1,))))
    await dp.set_vips("c", bed.net.path(bed.c), TaskVips((VipService(VIP, (B1,)),)))
    for port, (first, second) in zip((41001, 41002), ((str(B1), str(VIP)), (str(VIP), str(B1))), strict=True):
        await closed_by_the_server(bed.c, first, port)
        sh("ip", "netns", "exec", bed.c, "conntrack", "-D", "-p", "tcp", "--sport", str(port), check=False)
        before = syn_retransmissions(bed.c)
        await closed_by_the_server(bed.c, second, port)
        assert syn_retransmissions(bed.c) == before, f"a SYN to {second} from port {port} after {first} was resent"


async def test_a_flush_runs_conntrack_only_where_an_entry_matches(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend gone for good is flushed in every task namespace that balanced its VIP; the
    tool (a process) runs only where the namespace's listing shows a matching entry."""
    sh("ip", "netns", "exec", bed.c, "conntrack", "-I", "-p", "tcp", "-s", CLIENT, "-d", str(VIP),
       "--sport", "42001", "--dport", "80", "-r", str(B1), "-q", CLIENT, "--reply-port-src", "80",
       "--reply-port-dst", "42001", "--state", "ESTABLISHED", "-t", "100", "-u", "SEEN_REPLY")
    runs: list[list[str]] = []
    real_run = kernel.run

    async def counted(netns_fd: int | None, argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
        runs.append(list(argv))
        return await real_run(netns_fd, argv, stdin)

    monkeypatch.setattr(kernel, "run", counted)
    with netns_fd(bed.c) as fd:
        assert await kernel.conntrack_delete(fd, ("-d", str(VIP), "-r", str(B2))) == 0
        assert runs == [], "no entry to B2: no process"
        assert await kernel.conntrack_delete(fd, ("-d", str(VIP), "-r", str(B1))) == 1
        assert [argv[:2] for argv in runs] == [["conntrack", "-D"]]
    assert str(VIP) not in sh("ip", "netns", "exec", bed.c, "conntrack", "-L")
