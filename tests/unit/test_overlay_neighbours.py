"""The batched neighbour/FDB messages of overlay/neighbours.py, encoded and parsed back
(no kernel: the kernel's own answers are checked in tests/overlay)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from overlay import neighbours as nb
from overlay.plan import PeerEntries

IP = IPv4Address("10.0.1.3")
MAC = "02:42:0a:00:01:03"
VTEP = IPv4Address("198.18.0.2")


def _messages(*requests: nb.Request) -> list[tuple[int, int, int, bytes]]:
    return list(nb.iter_messages(b"".join(r.encode(100 + i) for i, r in enumerate(requests))))


def test_neighbour_add_and_delete_encode_what_ip_neigh_sends() -> None:
    add, delete = nb.neigh_request(True, 7, (IP, MAC)), nb.neigh_request(False, 7, (IP, MAC))
    (t1, f1, s1, p1), (t2, f2, s2, p2) = _messages(add, delete)
    assert (t1, s1, t2, s2) == (nb.RTM_NEWNEIGH, 100, nb.RTM_DELNEIGH, 101)
    assert f1 == nb.NLM_F_REQUEST | nb.NLM_F_ACK | nb.NLM_F_CREATE | nb.NLM_F_REPLACE
    assert f2 == nb.NLM_F_REQUEST | nb.NLM_F_ACK
    assert p1 == p2
    assert len(p1) == 12 + 8 + 12                       # ndmsg, NDA_DST, NDA_LLADDR (padded)
    msg = nb.parse_neigh(p1)
    assert (msg.family, msg.ifindex, msg.state, msg.flags) == (nb.AF_INET, 7, nb.NUD_PERMANENT, 0)
    assert (msg.dst, msg.lladdr) == (IP.packed, bytes.fromhex("02420a000103"))


def test_fdb_append_is_self_permanent_with_a_destination() -> None:
    ((msg_type, flags, _, payload),) = _messages(nb.fdb_request(True, 9, (MAC, VTEP)))
    assert msg_type == nb.RTM_NEWNEIGH
    assert flags & nb.NLM_F_APPEND and flags & nb.NLM_F_CREATE and not flags & nb.NLM_F_REPLACE
    msg = nb.parse_neigh(payload)
    assert (msg.family, msg.ifindex, msg.state, msg.flags) == (nb.AF_BRIDGE, 9, nb.NUD_PERMANENT, nb.NTF_SELF)
    assert (msg.dst, msg.lladdr) == (VTEP.packed, bytes.fromhex("02420a000103"))


def test_entries_keep_only_the_devices_permanent_and_remote_ones() -> None:
    def parsed(*requests: nb.Request) -> list[nb.NeighMessage]:
        return [nb.parse_neigh(payload) for _, _, _, payload in _messages(*requests)]

    kept = parsed(nb.neigh_request(True, 7, (IP, MAC)), nb.fdb_request(True, 7, (MAC, VTEP)))
    other_device = parsed(nb.neigh_request(True, 8, (IPv4Address("10.0.1.9"), MAC)))
    learned = [nb.NeighMessage(nb.AF_INET, 7, 0x02, 0, IPv4Address("10.0.1.4").packed, bytes(6))]   # REACHABLE
    local_fdb = [nb.NeighMessage(nb.AF_BRIDGE, 7, nb.NUD_PERMANENT, 0x04, None, bytes.fromhex("020000000001"))]
    ipv6_dst = [nb.NeighMessage(nb.AF_BRIDGE, 7, nb.NUD_PERMANENT, nb.NTF_SELF, bytes(16), bytes(6))]
    entries = nb.entries_of([*kept, *other_device, *learned, *local_fdb, *ipv6_dst], ifindex=7)
    assert entries == PeerEntries(frozenset({(IP, MAC)}), frozenset({(MAC, VTEP)}))


def test_messages_are_split_at_their_lengths_and_padding() -> None:
    payloads = [b"abc", b"defgh", b""]
    buffer = b""
    for i, p in enumerate(payloads):
        length = 16 + len(p)
        buffer += struct.pack("=IHHII", length, 40 + i, 0, i, 0) + p + b"\0" * (-length % 4)
    assert [(t, s, p) for t, _, s, p in nb.iter_messages(buffer)] == [(40, 0, b"abc"), (41, 1, b"defgh"), (42, 2, b"")]
    assert list(nb.iter_messages(struct.pack("=IHHII", 4, 1, 0, 0, 0))) == []     # a bogus length stops


def test_dump_request_asks_for_every_entry_of_a_family() -> None:
    ((msg_type, flags, _, payload),) = list(nb.iter_messages(nb.dump_request(nb.AF_BRIDGE)))
    assert msg_type == nb.RTM_GETNEIGH and flags & nb.NLM_F_DUMP == nb.NLM_F_DUMP
    assert nb.parse_neigh(payload).family == nb.AF_BRIDGE
