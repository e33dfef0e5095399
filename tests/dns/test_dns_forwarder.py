"""Forwarding to upstreams over real loopback sockets (no root needed): fake upstreams on
127.0.0.1 at random ports; the container's namespace is stood in for by the dial function."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from aio import cancel_and_wait
from ingress.dns import Forward, Forwarder, ForwardLimit, ServiceRecords, Upstream, answer
from ingress.dns.forwarder import dial_here, question_end, reply_matches
from ingress.dns.server import HostResolvers
from tests.dns.fake_upstream import FakeUpstream, bind_pair, running

ZONE = {"outside.example.": "192.0.2.80"}


def forward_of(name: str, rdtype: str = "A", **make: object) -> tuple[bytes, Forward]:
    wire = dns.message.make_query(name, rdtype, **make).to_wire()  # type: ignore[arg-type]
    decision = answer(wire, ServiceRecords(), (), random.Random(1))
    assert isinstance(decision, Forward)
    return wire, decision


@contextlib.asynccontextmanager
async def upstream(mode: str = "answer") -> AsyncIterator[tuple[FakeUpstream, Upstream]]:
    udp, tcp = bind_pair("127.0.0.1")
    fake = FakeUpstream(dict(ZONE), mode=mode)
    async with running(fake, udp, tcp):
        yield fake, Upstream(ipaddress.ip_address("127.0.0.1"), udp.getsockname()[1])


async def no_container(family: int, kind: int) -> socket.socket:
    raise AssertionError("a host-loopback upstream must not be dialled from the container")


def closed_port() -> Upstream:
    """A loopback port nothing listens on: UDP gets an ICMP refusal, TCP a RST."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return Upstream(ipaddress.ip_address("127.0.0.1"), port)


@pytest.mark.parametrize("tcp", [False, True])
async def test_reply_is_relayed_raw_with_the_clients_id(tcp: bool) -> None:
    async with upstream() as (fake, up):
        fwd = Forwarder(lambda: [up], dial_container=no_container)
        wire, query = forward_of("Outside.Example.", use_edns=0, payload=1232)
        reply = await fwd.forward(query, tcp=tcp)
    r = dns.message.from_wire(reply)
    assert r.id == query.id and reply[:2] == wire[:2]
    assert r.rcode() == dns.rcode.NOERROR
    assert {rrset.rdtype for rrset in r.answer} == {dns.rdatatype.A, dns.rdatatype.TXT}, "other types survive"
    assert [s.transport for s in fake.seen] == ["tcp" if tcp else "udp"]
    assert fwd.limit.in_flight == 0


async def test_nxdomain_is_relayed_not_retried() -> None:
    async with upstream() as (fake, up):
        reply = await Forwarder(lambda: [up, up], dial_container=no_container).forward(forward_of("nope.example.")[1])
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NXDOMAIN
    assert len(fake.seen) == 1


@pytest.mark.parametrize("tcp", [False, True])
async def test_a_refusing_upstream_moves_on_to_the_next(tcp: bool) -> None:
    async with upstream() as (fake, up):
        reply = await Forwarder(lambda: [closed_port(), up], dial_container=no_container).forward(
            forward_of("outside.example.")[1], tcp=tcp)
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
    assert len(fake.seen) == 1


async def test_a_silent_upstream_times_out_and_the_next_answers() -> None:
    async with upstream("silent") as (silent, first), upstream() as (fake, second):
        fwd = Forwarder(lambda: [first, second], dial_container=no_container, timeout=0.3)
        reply = await fwd.forward(forward_of("outside.example.")[1])
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
    assert len(silent.seen) == 1 and len(fake.seen) == 1


async def test_servfail_from_an_upstream_moves_on_and_all_failing_is_servfail() -> None:
    async with upstream("servfail") as (bad, first), upstream() as (_, second):
        reply = await Forwarder(lambda: [first, second], dial_container=no_container).forward(
            forward_of("outside.example.")[1])
        assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
        _, query = forward_of("outside.example.")
        reply = await Forwarder(lambda: [first, closed_port()], dial_container=no_container).forward(query)
    r = dns.message.from_wire(reply)
    assert r.rcode() == dns.rcode.SERVFAIL and r.id == query.id
    assert len(bad.seen) == 2


async def test_no_upstream_is_servfail() -> None:
    _, query = forward_of("outside.example.")
    reply = await Forwarder(lambda: [], dial_container=no_container).forward(query)
    assert dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL


async def test_a_reply_with_the_wrong_id_is_ignored() -> None:
    async with upstream("spoof") as (_, up):
        reply = await Forwarder(lambda: [up], dial_container=no_container, timeout=2).forward(
            forward_of("outside.example.")[1])
    r = dns.message.from_wire(reply)
    assert r.rcode() == dns.rcode.NOERROR and r.answer


async def test_loopback_upstreams_are_dialled_here_and_others_from_the_container() -> None:
    dialled: list[tuple[int, int]] = []

    async def container(family: int, kind: int) -> socket.socket:
        dialled.append((family, kind))
        raise OSError("the container has no route")  # stands in for an unreachable upstream

    remote = Upstream(ipaddress.ip_address("192.0.2.53"))
    async with upstream() as (fake, local):
        reply = await Forwarder(lambda: [remote, local], dial_container=container).forward(
            forward_of("outside.example.")[1])
        assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
        assert dialled == [(socket.AF_INET, socket.SOCK_DGRAM)] and len(fake.seen) == 1

        internal = Forwarder(lambda: [remote, local], dial_container=container, external_access=False)
        assert internal.candidates() == [remote], "internal networks skip host-loopback upstreams"
        reply = await internal.forward(forward_of("outside.example.")[1], tcp=True)
        assert dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL
        assert dialled[-1] == (socket.AF_INET, socket.SOCK_STREAM) and len(fake.seen) == 1


async def test_beyond_the_limit_in_flight_is_refused_at_once() -> None:
    limit = ForwardLimit(max_in_flight=1)
    async with upstream("silent") as (silent, up):
        fwd = Forwarder(lambda: [up], dial_container=no_container, limit=limit, timeout=30)
        pending = asyncio.create_task(fwd.forward(forward_of("outside.example.")[1]))
        await silent.got_query.wait()
        assert limit.in_flight == 1
        _, second = forward_of("outside.example.")
        r = dns.message.from_wire(await fwd.forward(second))
        assert r.rcode() == dns.rcode.REFUSED and r.id == second.id
        assert len(silent.seen) == 1, "the refused query never left"
        assert await cancel_and_wait([pending]) == []
    assert limit.in_flight == 0


async def test_dial_here_makes_a_plain_socket() -> None:
    with await dial_here(socket.AF_INET, socket.SOCK_DGRAM) as s:
        assert s.type == socket.SOCK_DGRAM


def test_reply_matching_checks_id_response_bit_and_question() -> None:
    query = dns.message.make_query("outside.example.", "A")
    sent = query.to_wire()
    assert question_end(sent) == len(sent)
    good = dns.message.make_response(query).to_wire()
    assert reply_matches(sent, good)
    assert reply_matches(sent, good[:12] + good[12:].upper()), "0x20 case changes are fine"
    assert not reply_matches(sent, sent), "not a response"
    assert not reply_matches(sent, b"\0\0" + good[2:]), "another id"
    other = dns.message.make_response(dns.message.make_query("other.example.", "A"))
    other.id = query.id
    assert not reply_matches(sent, other.to_wire())
    bare_error = good[:3] + bytes([good[3] | dns.rcode.FORMERR]) + b"\0\0" + good[6:12]
    assert reply_matches(sent, bare_error), "an error reply may leave the question out"
    assert question_end(sent[:-2]) is None


def test_host_resolvers_follow_the_file_and_keep_the_last_known_on_errors(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 10.0.0.1\n")
    resolvers = HostResolvers(str(path))
    assert [str(u) for u in resolvers()] == ["10.0.0.1:53"]
    path.write_text("nameserver 10.0.0.2\nnameserver 127.0.0.53\n")  # another size: seen at once
    assert [str(u) for u in resolvers()] == ["10.0.0.2:53", "127.0.0.53:53"]
    path.unlink()
    assert [str(u) for u in resolvers()] == ["10.0.0.2:53", "127.0.0.53:53"]
    assert HostResolvers(str(tmp_path / "missing"))() == []
