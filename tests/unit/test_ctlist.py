"""ingress/dataplane/ctlist.py: which conntrack entries a flush filter (as plan.py writes them)
would delete, read from /proc/net/nf_conntrack lines."""

from __future__ import annotations

from ingress.dataplane.ctlist import any_match

LISTING = (
    "ipv4     2 tcp      6 117 TIME_WAIT src=10.0.0.9 dst=10.0.1.5 sport=41001 dport=80 src=10.0.0.7 "
    "dst=10.0.0.9 sport=80 dport=31556 [ASSURED] mark=0 zone=0 use=2\n"
    "ipv4     2 udp      17 28 src=10.0.0.9 dst=10.0.1.6 sport=5000 dport=53 [UNREPLIED] src=10.0.0.8 "
    "dst=10.0.0.9 sport=53 dport=5000 mark=0 zone=0 use=2\n"
    "ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.200 dst=10.0.0.2 sport=50000 dport=8080 "
    "src=10.0.0.11 dst=198.18.0.200 sport=80 dport=50000 [ASSURED] mark=0 zone=0 use=2\n"
)


def test_a_vip_flush_matches_on_the_original_destination_and_the_reply_source() -> None:
    assert any_match(LISTING, ("-d", "10.0.1.5", "-r", "10.0.0.7")) is True
    assert any_match(LISTING, ("-d", "10.0.1.5", "-r", "10.0.0.8")) is False, "another backend"
    assert any_match(LISTING, ("-d", "10.0.1.6", "-r", "10.0.0.8")) is True, "UDP, [UNREPLIED] between the sides"
    assert any_match(LISTING, ("-d", "10.0.0.7", "-r", "10.0.0.7")) is False, "the reply's source is not the dst"


def test_a_port_flush_matches_protocol_and_ports_and_unknown_options_say_nothing() -> None:
    mesh = ("-p", "tcp", "--orig-port-dst", "8080", "-r", "10.0.0.11", "--reply-port-src", "80")
    assert any_match(LISTING, mesh) is True
    assert any_match(LISTING, ("-p", "udp", *mesh[2:])) is False
    assert any_match(LISTING, (*mesh[:-1], "81")) is False
    assert any_match("", mesh) is False
    assert any_match(LISTING, ("--mark", "1")) is None
    assert any_match(LISTING, ("-d",)) is None
