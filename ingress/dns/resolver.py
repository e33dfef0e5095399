"""The embedded DNS resolver's decisions: a pure function from query bytes to a reply.

`answer(query, records, client_networks, rng)` never touches sockets or clocks. It returns
  - `Answer(wire)`: bytes to send back to the client as they are;
  - `Forward(query, message)`: not ours, relay the raw query upstream (see forwarder.py);
  - `Drop(reason)`: say nothing (shorter than a header, or a response rather than a query).

What is answered locally (per network the client shares, see records.py for the names):
  - A for a known name: its IPv4 addresses, shuffled per reply with the given `rng`;
  - AAAA for a known name: its IPv6 addresses, so an IPv4-only name gets an empty NOERROR
    (a client asking A and AAAA in parallel must not wait on upstream for the AAAA half);
  - MX for a known name: empty NOERROR;
  - PTR for a task address: `<task name>.<network name>.` (VIPs have no PTR);
  - a message that does not parse: FORMERR.
Everything else (unknown names, other types or classes, other opcodes, several questions,
TSIG-signed queries) is forwarded.

TTL: `LOCAL_TTL` = 0 on every local record. Answers must be fresh within one second of a
change in cluster state (a scale, an update, a node failure). Any TTL above zero lets a cache
in the container (nscd, systemd-resolved, a language runtime that honours TTLs) keep an old
set for that long on top of the time the change takes to reach the node; Docker's 600 s is a
known source of stale-DNS complaints. Zero means "do not cache" (RFC 1035 §3.2.1), and asking
again costs one round trip over loopback to a table held in memory.

Building: dnspython parses every query (and builds the rare error replies); a local answer is
laid out by hand, as header + the client's question + fixed-size records that point back at
it. Rendering through dnspython's message objects cost about four times as much per answer,
and with a zero TTL every lookup in every container reaches this function.

Size: over UDP an answer fits 512 bytes, or the client's EDNS payload size if it sent one;
records that do not fit are dropped whole (the first ones of the shuffled set are kept, so a
client that ignores TC still gets some addresses) and TC is set so that it can retry over TCP.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename

from ingress.dns.records import IPAddress, ServiceRecords

LOCAL_TTL = 0
UDP_DEFAULT_SIZE = 512     # RFC 1035: a UDP message without EDNS
MAX_MESSAGE = 65535
OUR_EDNS_PAYLOAD = 1232    # what we advertise back (DNS flag day 2020)
HEADER_SIZE = 12
NAME_AT_QUESTION = b"\xc0\x0c"  # a compression pointer to the question name, right after the header


@dataclass(frozen=True)
class Answer:
    wire: bytes


@dataclass(frozen=True, eq=False)
class Forward:
    """A query to relay upstream untouched; `message` is its parse (at least its question)."""

    query: bytes
    message: dns.message.Message

    @property
    def id(self) -> int:
        return int.from_bytes(self.query[:2], "big")

    def error(self, rcode: dns.rcode.Rcode) -> bytes:
        """The reply to give when forwarding cannot (REFUSED) or did not (SERVFAIL) work."""
        return _error_reply(self.message, rcode)


@dataclass(frozen=True)
class Drop:
    reason: str


Reply = Answer | Forward | Drop


def answer(query: bytes, records: ServiceRecords, client_networks: Sequence[str], rng: random.Random,
           *, tcp: bool = False) -> Reply:
    """Decide what to do with one query from a client on `client_networks` (network ids, in
    the order names are resolved). `tcp`: the query came over TCP (no size limit but 64 KiB)."""
    if len(query) < HEADER_SIZE:
        return Drop("shorter than a DNS header")
    if query[2] & 0x80:
        return Drop("a response, not a query")
    try:
        message = dns.message.from_wire(query)
    except dns.message.UnknownTSIGKey:  # signed for someone else: upstream may know the key
        try:
            return Forward(query, dns.message.from_wire(query, question_only=True))
        except Exception:  # any parse failure: a malformed query
            return Answer(_formerr(query))
    except Exception:
        return Answer(_formerr(query))

    if message.opcode() != dns.opcode.QUERY or len(message.question) != 1:
        return Forward(query, message)
    question = message.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return Forward(query, message)

    if message.edns > 0:  # an EDNS version we do not speak: upstream answers BADVERS
        return Forward(query, message)

    qtype = question.rdtype
    if qtype == dns.rdatatype.PTR:
        target = _ptr_target(question.name, records, client_networks)
        if target is None:
            return Forward(query, message)
        return Answer(_reply(message, [(qtype, dns.name.from_text(target).to_wire() or b"")], tcp))
    if qtype not in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.MX):
        return Forward(query, message)
    if question.name == dns.name.root:
        return Forward(query, message)
    addresses = records.lookup(question.name.to_text(omit_final_dot=True), client_networks)
    if addresses is None:
        return Forward(query, message)
    found: list[IPAddress] = []
    if qtype != dns.rdatatype.MX:
        version = 4 if qtype == dns.rdatatype.A else 6
        found = [a for a in addresses if a.version == version]
        rng.shuffle(found)
    return Answer(_reply(message, [(qtype, a.packed) for a in found], tcp))


def _ptr_target(qname: dns.name.Name, records: ServiceRecords, client_networks: Sequence[str]) -> str | None:
    try:
        address: IPAddress = ipaddress.ip_address(dns.reversename.to_address(qname))
    except (dns.exception.DNSException, ValueError):
        return None
    return records.reverse(address, client_networks)


def _reply(query: dns.message.Message, rrs: list[tuple[int, bytes]], tcp: bool) -> bytes:
    """A NOERROR answer to a one-question query: `rrs` are (type, rdata) owned by the question
    name, laid out as header, the question (in the client's own spelling: 0x20-randomising
    clients check it), one record per address pointing back at it, and OPT if the client sent
    EDNS. Records that do not fit the size limit are left out whole and TC is set."""
    question = query.question[0]
    question_wire = question.name.to_wire() or b""
    question_wire += struct.pack("!HH", question.rdtype, question.rdclass)
    opt = b"\0" + struct.pack("!HHIH", dns.rdatatype.OPT, OUR_EDNS_PAYLOAD, 0, 0) if query.edns >= 0 else b""
    room = _size_limit(query, tcp) - HEADER_SIZE - len(question_wire) - len(opt)
    records: list[bytes] = []
    flags = dns.flags.QR | dns.flags.AA | dns.flags.RA | (query.flags & (dns.flags.RD | dns.flags.CD))
    for rdtype, rdata in rrs:
        record = NAME_AT_QUESTION + struct.pack("!HHIH", rdtype, dns.rdataclass.IN, LOCAL_TTL, len(rdata)) + rdata
        if len(record) > room:
            flags |= dns.flags.TC
            break
        records.append(record)
        room -= len(record)
    header = struct.pack("!HHHHHH", query.id, flags, 1, len(records), 0, 1 if opt else 0)
    return header + question_wire + b"".join(records) + opt


def _size_limit(query: dns.message.Message, tcp: bool) -> int:
    if tcp:
        return MAX_MESSAGE
    if query.edns >= 0:
        return min(max(query.payload, UDP_DEFAULT_SIZE), MAX_MESSAGE)
    return UDP_DEFAULT_SIZE


def _error_reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query, recursion_available=True, our_payload=OUR_EDNS_PAYLOAD)
    response.set_rcode(rcode)
    return response.to_wire(max_size=_size_limit(query, tcp=False), prefer_truncation=True)


def _formerr(query: bytes) -> bytes:
    """A header-only FORMERR for a query that does not parse: its ID, opcode and RD kept."""
    flags = 0x8000 | (query[2] & 0x78) << 8 | (query[2] & 0x01) << 8 | 0x0080 | int(dns.rcode.FORMERR)
    return query[:2] + flags.to_bytes(2, "big") + bytes(8)
