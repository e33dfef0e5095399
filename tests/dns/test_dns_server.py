"""The embedded DNS server for real: network namespaces, nftables, sockets at 127.0.0.11:53.

Each test makes two namespaces, `<name>-d` standing for the daemon's host namespace and
`<name>-c` for a container's, and runs its event loop in a thread that has joined `<name>-d`
(so the fake upstream on 127.0.0.1:53 there is the daemon's host-loopback resolver, and nothing
can leak to the machine's own network). The namespaces are deleted by name afterwards, pass or
fail. Clients query from inside `<name>-c`: busybox nslookup, and dnspython in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rcode
import pytest
import uvloop

from ingress.dns import DnsServer, NetworkEntry, ServiceEntry, ServiceRecords, TaskEntry
from ingress.dns.nat import TABLE
from ingress.dns.netns import open_netns, run_in_netns, setns
from ingress.dns.records import parse_address
from tests.conftest import needs_root
from tests.dns.fake_upstream import FakeUpstream, bind_pair, running

T = TypeVar("T")

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not all(shutil.which(t) or Path(f"/usr/sbin/{t}").exists() for t in ("nft", "nsenter", "ip"))
                       or not shutil.which("busybox"), reason="needs nft, nsenter, ip and busybox"),
]

NET = "net-app-id"
_counter = itertools.count(1)


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """make(suffix) → a fresh namespace `sdns<pid><n>-<suffix>` with lo up; all deleted by name."""
    needs_root()
    base = f"sdns{os.getpid() % 100000:05d}{next(_counter):02d}"
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"{base}-{suffix}"
        _ip("netns", "delete", name, check=False)  # a leftover of a crashed run with this pid
        made.append(name)
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in made:
            _ip("netns", "delete", name, check=False)
        left = [n for n in made if Path(f"/run/netns/{n}").exists()]
        assert not left, f"namespaces left behind: {left}"


def in_namespace(ns: str, scenario: Callable[[], Coroutine[Any, Any, T]], loop: str = "asyncio") -> T:
    """Run an asyncio scenario whose loop (asyncio's or uvloop, the daemon's) lives in namespace
    `ns` (the stand-in daemon's)."""
    outcome: dict[str, Any] = {}

    def body() -> None:
        fd = open_netns(f"/run/netns/{ns}")
        try:
            setns(fd)
        finally:
            os.close(fd)
        try:
            factory = uvloop.new_event_loop if loop == "uvloop" else None
            with asyncio.Runner(loop_factory=factory) as runner:
                outcome["value"] = runner.run(asyncio.wait_for(scenario(), 60))
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=body, name=f"daemon-{ns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def net_ino(path: str) -> int:
    return os.stat(path).st_ino


def records(*web_addresses: str) -> ServiceRecords:
    tasks = tuple(TaskEntry(name=f"web.{i}.task{i:03d}", task_id=f"task{i:03d}",
                            container_id=f"{i:02d}deadbeef00" + "0" * 52, address=parse_address(a),
                            hostname=f"web-host-{i}")
                  for i, a in enumerate(web_addresses, 1))
    return ServiceRecords.of([NetworkEntry(NET, "app", (ServiceEntry(
        name="web", service_id="websvc", endpoint_mode="vip", vip=None, tasks=tasks),))])


async def ask(ctr_fd: int, name: str, *, tcp: bool = False) -> dns.message.Message:
    """Query 127.0.0.11:53 from inside the container namespace."""
    query = dns.message.make_query(name, "A")
    if tcp:
        return await run_in_netns(ctr_fd, lambda: dns.query.tcp(query, "127.0.0.11", port=53, timeout=10))
    return await run_in_netns(ctr_fd, lambda: dns.query.udp(query, "127.0.0.11", port=53, timeout=10))


def a_records(m: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in m.answer for rd in rrset if rrset.rdtype == 1}


def connect(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=10):
        pass


@contextlib.asynccontextmanager
async def ctr_netns(path: str) -> AsyncIterator[int]:
    fd = open_netns(path)
    try:
        yield fd
    finally:
        os.close(fd)


async def run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_server_answers_names_forwards_the_rest_and_takes_updates(netns, tmp_path: Path, loop: str) -> None:
    daemon_ns, ctr_ns = netns("d"), netns("c")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\nsearch lab.example\n")
    ctr_path = f"/run/netns/{ctr_ns}"

    async def scenario() -> None:
        loop_ns = net_ino("/proc/thread-self/ns/net")
        before = asyncio.all_tasks()
        fake = FakeUpstream({"outside.example.": "192.0.2.80"})
        async with running(fake, *bind_pair("127.0.0.1", 53)), ctr_netns(ctr_path) as ctr_fd:
            server = DnsServer(ctr_path, records("10.0.1.5/24", "10.0.1.6/24"), [NET],
                               resolv_conf_path=str(resolv))
            await server.start()
            try:
                assert server.udp_port and server.tcp_port
                rules = await run("nsenter", f"--net={ctr_path}", "nft", "list", "table", "ip", TABLE)
                assert f"udp dport set {server.udp_port}" in rules
                assert f"tcp dport set {server.tcp_port}" in rules

                out = await run("nsenter", f"--net={ctr_path}", "busybox", "nslookup", "web", "127.0.0.11")
                assert "10.0.1.5" in out and "10.0.1.6" in out, out

                tasks_web = await ask(ctr_fd, "tasks.web")
                assert a_records(tasks_web) == {"10.0.1.5", "10.0.1.6"}
                assert all(rrset.ttl == 0 for rrset in tasks_web.answer)
                assert a_records(await ask(ctr_fd, "TASKS.WEB.app", tcp=True)) == {"10.0.1.5", "10.0.1.6"}
                assert a_records(await ask(ctr_fd, "web-host-2")) == {"10.0.1.6"}

                outside = await ask(ctr_fd, "outside.example")
                assert a_records(outside) == {"192.0.2.80"}
                assert [(s.transport, s.name) for s in fake.seen] == [("udp", "outside.example.")]
                assert a_records(await ask(ctr_fd, "outside.example", tcp=True)) == {"192.0.2.80"}
                missing = await ask(ctr_fd, "nowhere.example")
                assert missing.rcode() == dns.rcode.NXDOMAIN

                server.update(records("10.0.1.7/24"))
                assert a_records(await ask(ctr_fd, "web")) == {"10.0.1.7"}, "the very next query"
                assert a_records(await ask(ctr_fd, "tasks.web", tcp=True)) == {"10.0.1.7"}
                assert {s.name for s in fake.seen} == {"outside.example.", "nowhere.example."}, \
                    "local names are never forwarded"
                if shutil.which("conntrack"):
                    flows = await run("nsenter", f"--net={ctr_path}", "conntrack", "-L")
                    assert "127.0.0.11" not in flows, f"the DNS rules need no connection tracking: {flows}"
            finally:
                await server.close()
            await server.close()  # idempotent

            rules = await run("nsenter", f"--net={ctr_path}", "nft", "list", "tables")
            assert TABLE not in rules, rules
            for port in (53, server.tcp_port):
                with pytest.raises(ConnectionRefusedError):
                    await run_in_netns(ctr_fd, functools.partial(connect, ("127.0.0.11", port)))
        assert asyncio.all_tasks() == before, "the server left tasks behind"
        assert net_ino("/proc/thread-self/ns/net") == loop_ns, "the loop's thread never changes namespace"

    in_namespace(daemon_ns, scenario, loop)


def test_internal_sandbox_skips_host_loopback_and_dials_others_from_the_container(netns, tmp_path: Path) -> None:
    daemon_ns, ctr_ns = netns("d"), netns("c")
    # The container's resolver address exists only inside the container namespace.
    _ip("-n", ctr_ns, "addr", "add", "192.0.2.53/32", "dev", "lo")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\nnameserver 192.0.2.53\n")
    ctr_path = f"/run/netns/{ctr_ns}"

    async def scenario() -> None:
        before = asyncio.all_tasks()
        host_fake = FakeUpstream({"outside.example.": "192.0.2.80"})
        ctr_fake = FakeUpstream({"outside.example.": "192.0.2.81"})
        ctr_fd = open_netns(ctr_path)
        try:
            ctr_sockets = await run_in_netns(ctr_fd, lambda: bind_pair("192.0.2.53", 53))
            async with running(host_fake, *bind_pair("127.0.0.1", 53)), running(ctr_fake, *ctr_sockets):
                async with DnsServer(ctr_path, records("10.0.1.5"), [NET], resolv_conf_path=str(resolv),
                                     external_access=False) as server:
                    assert a_records(await ask(ctr_fd, "outside.example")) == {"192.0.2.81"}
                    assert a_records(await ask(ctr_fd, "outside.example", tcp=True)) == {"192.0.2.81"}
                    assert host_fake.seen == [], "internal: the host-loopback resolver is skipped"
                    assert [s.transport for s in ctr_fake.seen] == ["udp", "tcp"]

                    server._forwarder.external_access = True  # the same sandbox with external access
                    assert a_records(await ask(ctr_fd, "outside.example")) == {"192.0.2.80"}
                    assert len(host_fake.seen) == 1
        finally:
            os.close(ctr_fd)
        assert asyncio.all_tasks() == before

    in_namespace(daemon_ns, scenario)


def test_start_on_something_that_is_no_namespace_fails_and_leaves_nothing(tmp_path: Path) -> None:
    needs_root()
    not_a_namespace = tmp_path / "plain-file"
    not_a_namespace.write_text("")

    async def scenario() -> None:
        before = asyncio.all_tasks()
        server = DnsServer(str(not_a_namespace), ServiceRecords(), [NET], resolv_conf_path="/nonexistent")
        with pytest.raises(OSError, match="setns"):
            await server.start()
        assert asyncio.all_tasks() == before
        assert server._netns_fd is None
        await server.close()

    asyncio.run(scenario())


def test_a_server_over_rules_left_by_an_earlier_one_replaces_them(netns, tmp_path: Path) -> None:
    """A new sandbox's table is created without a delete (a delete waits for a grace period); a
    namespace that still holds an earlier server's table (a daemon restarted over running
    containers, or a close that left them to a namespace about to go) gets it replaced whole."""
    daemon_ns, ctr_ns = netns("d"), netns("c")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    ctr_path = f"/run/netns/{ctr_ns}"

    async def scenario() -> None:
        async with ctr_netns(ctr_path) as ctr_fd:
            first = DnsServer(ctr_path, records("10.0.1.5"), [NET], resolv_conf_path=str(resolv))
            await first.start()
            await first.close(remove_rules=False)
            rules = await run("nsenter", f"--net={ctr_path}", "nft", "list", "table", "ip", TABLE)
            assert f"udp dport set {first.udp_port}" in rules, "the rules were left"
            async with DnsServer(ctr_path, records("10.0.1.6"), [NET], resolv_conf_path=str(resolv)) as second:
                rules = await run("nsenter", f"--net={ctr_path}", "nft", "list", "table", "ip", TABLE)
                assert rules.count("dport set") == 2, rules
                assert f"udp dport set {second.udp_port}" in rules
                assert a_records(await ask(ctr_fd, "web")) == {"10.0.1.6"}
                assert a_records(await ask(ctr_fd, "web", tcp=True)) == {"10.0.1.6"}
            rules = await run("nsenter", f"--net={ctr_path}", "nft", "list", "tables")
            assert TABLE not in rules, rules

    in_namespace(daemon_ns, scenario)
