"""The embedded DNS resolver's decisions, driven directly: query bytes in, a reply out."""

from __future__ import annotations

import ipaddress
import random

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.reversename
import pytest

from ingress.dns import (
    LOCAL_TTL,
    Answer,
    Drop,
    Forward,
    NetworkEntry,
    ServiceEntry,
    ServiceRecords,
    TaskEntry,
    answer,
)
from ingress.dns.records import parse_address

FRONT, BACK, OTHER = "net-front-id", "net-back-id", "net-other-id"


def task(service: str, slot: int, address: str, *, hostname: str = "", aliases: tuple[str, ...] = ()) -> TaskEntry:
    task_id = f"{service}task{slot:02d}"
    return TaskEntry(name=f"{service}.{slot}.{task_id}", task_id=task_id,
                     container_id=f"{slot:02d}c0ffee{service}" + "0" * 50, address=parse_address(address),
                     hostname=hostname, aliases=aliases)


WEB_TASKS = (task("web", 1, "10.0.1.5/24", hostname="webhost1", aliases=("w1",)),
             task("web", 2, "10.0.1.6/24"),
             task("web", 3, "10.0.1.7/24"))
WEB = ServiceEntry(name="web", service_id="websvcid", endpoint_mode="vip", vip=None,
                   aliases=("frontend",), tasks=WEB_TASKS)
API_TASKS = (task("api", 1, "10.0.2.5"), task("api", 2, "10.0.2.6"))
API = ServiceEntry(name="api", service_id="apisvcid", endpoint_mode="vip", vip=parse_address("10.0.2.2/24"),
                   aliases=("backend",), tasks=API_TASKS)
DB = ServiceEntry(name="db", service_id="dbsvcid", endpoint_mode="dnsrr", vip=parse_address("10.0.2.3"),
                  tasks=(task("db", 1, "10.0.2.9"),))
EMPTY = ServiceEntry(name="idle", service_id="idlesvcid", endpoint_mode="dnsrr")
SECRET = ServiceEntry(name="secret", service_id="secretid", tasks=(task("secret", 1, "10.0.3.5"),))

RECORDS = ServiceRecords.of([
    NetworkEntry(FRONT, "front", (WEB,)),
    NetworkEntry(BACK, "back", (API, DB, EMPTY)),
    NetworkEntry(OTHER, "other", (SECRET,)),
])
CLIENT = (FRONT, BACK)  # a task on front and back, not on other


def query(name: str, rdtype: str = "A", *, tcp: bool = False, networks: tuple[str, ...] = CLIENT,
          records: ServiceRecords = RECORDS, seed: int = 1, **make: object) -> dns.message.Message:
    """Ask `name`; the Answer parsed (fails the test if the resolver did not answer locally)."""
    wire = dns.message.make_query(name, rdtype, **make).to_wire()  # type: ignore[arg-type]
    reply = answer(wire, records, networks, random.Random(seed), tcp=tcp)
    assert isinstance(reply, Answer), f"{name} {rdtype}: {reply}"
    response = dns.message.from_wire(reply.wire)
    assert response.id == int.from_bytes(wire[:2], "big")
    return response


def decide(name: str, rdtype: str = "A", rdclass: str = "IN", networks: tuple[str, ...] = CLIENT) -> object:
    wire = dns.message.make_query(name, rdtype, rdclass).to_wire()
    return answer(wire, RECORDS, networks, random.Random(1))


def addresses(response: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in response.answer for rd in rrset}


def test_service_without_vip_answers_every_task_address() -> None:
    r = query("web")
    assert r.rcode() == dns.rcode.NOERROR
    assert addresses(r) == {"10.0.1.5", "10.0.1.6", "10.0.1.7"}


def test_vip_mode_with_a_vip_answers_the_vip_and_dnsrr_answers_tasks() -> None:
    assert addresses(query("api")) == {"10.0.2.2"}
    assert addresses(query("db")) == {"10.0.2.9"}, "dnsrr ignores a VIP"


def test_tasks_prefix_answers_every_task_in_both_modes_and_for_aliases() -> None:
    assert addresses(query("tasks.api")) == {"10.0.2.5", "10.0.2.6"}
    assert addresses(query("tasks.backend")) == {"10.0.2.5", "10.0.2.6"}
    assert addresses(query("tasks.web")) == {"10.0.1.5", "10.0.1.6", "10.0.1.7"}
    assert addresses(query("tasks.db")) == {"10.0.2.9"}


def test_service_aliases_answer_like_the_service() -> None:
    assert addresses(query("frontend")) == {"10.0.1.5", "10.0.1.6", "10.0.1.7"}
    assert addresses(query("backend")) == {"10.0.2.2"}


def test_task_name_short_id_hostname_and_task_alias_answer_that_task() -> None:
    one = WEB_TASKS[0]
    assert len(one.short_id) == 12 and one.container_id.startswith(one.short_id)
    for name in (one.name, one.short_id, "webhost1", "w1"):
        assert addresses(query(name)) == {"10.0.1.5"}, name
    assert addresses(query(API_TASKS[1].name)) == {"10.0.2.6"}


def test_name_dot_network_resolves_on_that_network_only() -> None:
    assert addresses(query("web.front")) == {"10.0.1.5", "10.0.1.6", "10.0.1.7"}
    assert addresses(query("tasks.api.back")) == {"10.0.2.5", "10.0.2.6"}
    assert addresses(query(f"{WEB_TASKS[1].name}.front")) == {"10.0.1.6"}
    assert isinstance(decide("web.back"), Forward), "web is not on back"


def test_only_networks_the_client_shares_are_searched() -> None:
    assert isinstance(decide("secret"), Forward)
    assert isinstance(decide("secret.other"), Forward)
    assert addresses(query("secret", networks=(OTHER,))) == {"10.0.3.5"}
    assert isinstance(decide("web", networks=(BACK,)), Forward)


def test_the_first_network_in_the_clients_order_wins() -> None:
    shadow = ServiceEntry(name="web", service_id="other-web", vip=parse_address("10.9.9.9"))
    records = RECORDS.with_network(NetworkEntry(OTHER, "other", (shadow,)))
    assert addresses(query("web", records=records, networks=(FRONT, OTHER))) == {"10.0.1.5", "10.0.1.6", "10.0.1.7"}
    assert addresses(query("web", records=records, networks=(OTHER, FRONT))) == {"10.9.9.9"}


def test_lookups_are_case_insensitive_and_keep_the_clients_spelling() -> None:
    r = query("WeB.FrOnT")
    assert addresses(r) == {"10.0.1.5", "10.0.1.6", "10.0.1.7"}
    assert {rrset.name.to_text() for rrset in r.answer} == {"WeB.FrOnT."}
    assert addresses(query("TASKS.Backend")) == {"10.0.2.5", "10.0.2.6"}
    assert addresses(query(WEB_TASKS[0].short_id.upper())) == {"10.0.1.5"}
    assert addresses(query("WEBHOST1.")) == {"10.0.1.5"}


def test_a_service_with_no_address_is_ours_and_answers_empty() -> None:
    r = query("idle")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    assert query("tasks.idle").answer == []


def test_aaaa_of_an_ipv4_only_name_is_empty_noerror_not_forwarded() -> None:
    for name in ("web", "api", "tasks.web", WEB_TASKS[0].name):
        r = query(name, "AAAA")
        assert r.rcode() == dns.rcode.NOERROR and r.answer == [], name
    assert isinstance(decide("example.com", "AAAA"), Forward)


def test_aaaa_answers_ipv6_task_addresses() -> None:
    v6 = ServiceEntry(name="six", service_id="six", endpoint_mode="dnsrr",
                      tasks=(task("six", 1, "fd00::5"), task("six", 2, "10.0.9.5")))
    records = RECORDS.with_network(NetworkEntry(FRONT, "front", (v6,)))
    assert addresses(query("six", "AAAA", records=records)) == {"fd00::5"}
    assert addresses(query("six", "A", records=records)) == {"10.0.9.5"}


def test_mx_of_a_known_name_is_empty_noerror_and_unknown_is_forwarded() -> None:
    r = query("web", "MX")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    assert isinstance(decide("example.com", "MX"), Forward)


def test_ptr_of_a_task_address_names_the_task_on_its_network() -> None:
    r = query(dns.reversename.from_address("10.0.1.6").to_text(), "PTR")
    assert [rd.to_text() for rrset in r.answer for rd in rrset] == [f"{WEB_TASKS[1].name}.front."]
    r = query(dns.reversename.from_address("10.0.2.5").to_text().upper(), "PTR")
    assert [rd.to_text() for rrset in r.answer for rd in rrset] == [f"{API_TASKS[0].name}.back."]


def test_ptr_of_a_vip_an_unknown_or_unshared_address_is_forwarded() -> None:
    for address in ("10.0.2.2", "192.0.2.1", "10.0.3.5"):
        assert isinstance(decide(dns.reversename.from_address(address).to_text(), "PTR"), Forward), address
    assert isinstance(decide("not-an-arpa-name.example", "PTR"), Forward)


def test_every_local_record_has_the_short_ttl() -> None:
    assert LOCAL_TTL == 0
    for name, rdtype in (("web", "A"), ("api", "A"), (dns.reversename.from_address("10.0.1.5").to_text(), "PTR")):
        r = query(name, rdtype)
        assert r.answer and all(rrset.ttl == LOCAL_TTL for rrset in r.answer)


def test_multiple_addresses_are_shuffled_per_reply_reproducibly_from_the_rng() -> None:
    def order(seed: int) -> list[str]:
        return [rd.to_text() for rrset in query("tasks.web", seed=seed).answer for rd in rrset]

    assert order(7) == order(7), "same seed, same order"
    orders = {tuple(order(seed)) for seed in range(20)}
    assert len(orders) > 1, "the order changes between replies"
    assert all(sorted(o) == ["10.0.1.5", "10.0.1.6", "10.0.1.7"] for o in orders)

    rng = random.Random(3)  # one rng across replies, as a server holds it
    wire = dns.message.make_query("tasks.web", "A").to_wire()
    seen = set()
    for _ in range(20):
        reply = answer(wire, RECORDS, CLIENT, rng)
        assert isinstance(reply, Answer)
        seen.add(tuple(rd.to_text() for rrset in dns.message.from_wire(reply.wire).answer for rd in rrset))
    assert len(seen) > 1


def test_reply_header_keeps_id_and_rd_and_offers_recursion() -> None:
    r = query("web")
    assert r.flags & dns.flags.QR and r.flags & dns.flags.RD and r.flags & dns.flags.RA
    assert r.flags & dns.flags.AA
    assert not r.flags & dns.flags.TC
    assert [q.to_text() for q in r.question] == ["web. IN A"]


BIG = ServiceRecords.of([NetworkEntry(FRONT, "front", (ServiceEntry(
    name="big", service_id="bigid", endpoint_mode="dnsrr",
    tasks=tuple(task("big", i, f"10.0.4.{i}") for i in range(1, 101))),))])


def test_udp_answer_is_truncated_to_512_bytes_with_tc_keeping_what_fits() -> None:
    wire = dns.message.make_query("tasks.big", "A").to_wire()
    reply = answer(wire, BIG, (FRONT,), random.Random(1))
    assert isinstance(reply, Answer)
    assert len(reply.wire) <= 512
    r = dns.message.from_wire(reply.wire)
    assert r.flags & dns.flags.TC
    kept = addresses(r)
    assert 10 < len(kept) < 100 and kept <= {f"10.0.4.{i}" for i in range(1, 101)}


def test_udp_answer_fits_the_clients_edns_size() -> None:
    small = query("tasks.big", records=BIG, use_edns=0, payload=1000)
    assert small.flags & dns.flags.TC and 10 < len(addresses(small)) < 100
    wire = dns.message.make_query("tasks.big", "A", use_edns=0, payload=1000).to_wire()
    reply = answer(wire, BIG, (FRONT,), random.Random(1))
    assert isinstance(reply, Answer) and 512 < len(reply.wire) <= 1000
    large = query("tasks.big", records=BIG, use_edns=0, payload=4096)
    assert not large.flags & dns.flags.TC and len(addresses(large)) == 100
    assert large.edns == 0


def test_tcp_answer_is_whole() -> None:
    r = query("tasks.big", records=BIG, tcp=True)
    assert not r.flags & dns.flags.TC and len(addresses(r)) == 100


@pytest.mark.parametrize(("name", "rdtype", "rdclass"), [
    ("example.com", "A", "IN"),          # unknown name
    ("web.example.com", "A", "IN"),      # a suffix that is no network
    ("web", "TXT", "IN"),                # a type we do not answer, even for our names
    ("web", "SRV", "IN"),
    ("web", "ANY", "IN"),
    ("version.bind", "TXT", "CH"),       # another class
    ("web", "A", "CH"),
    (".", "A", "IN"),
])
def test_everything_else_is_forwarded_untouched(name: str, rdtype: str, rdclass: str) -> None:
    wire = dns.message.make_query(name, rdtype, rdclass).to_wire()
    reply = answer(wire, RECORDS, CLIENT, random.Random(1))
    assert isinstance(reply, Forward)
    assert reply.query == wire and reply.id == int.from_bytes(wire[:2], "big")


def test_other_opcodes_and_several_questions_are_forwarded() -> None:
    notify = dns.message.make_query("web", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert isinstance(answer(notify.to_wire(), RECORDS, CLIENT, random.Random(1)), Forward)
    two = dns.message.make_query("web", "A")
    two.question.append(dns.message.make_query("api", "A").question[0])
    assert isinstance(answer(two.to_wire(), RECORDS, CLIENT, random.Random(1)), Forward)
    edns1 = dns.message.make_query("web", "A", use_edns=1)
    assert isinstance(answer(edns1.to_wire(), RECORDS, CLIENT, random.Random(1)), Forward), "upstream says BADVERS"


def test_edns_and_checking_disabled_are_echoed() -> None:
    r = query("web", use_edns=0, payload=4096, want_dnssec=False)
    assert r.edns == 0 and r.payload == 1232
    q = dns.message.make_query("web", "A")
    q.flags |= dns.flags.CD
    reply = answer(q.to_wire(), RECORDS, CLIENT, random.Random(1))
    assert isinstance(reply, Answer) and dns.message.from_wire(reply.wire).flags & dns.flags.CD
    assert not query("web").flags & dns.flags.CD


def test_forward_errors_carry_the_id_and_question() -> None:
    wire = dns.message.make_query("example.com", "A").to_wire()
    reply = answer(wire, RECORDS, CLIENT, random.Random(1))
    assert isinstance(reply, Forward)
    for rcode in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
        r = dns.message.from_wire(reply.error(rcode))
        assert r.id == reply.id and r.rcode() == rcode
        assert [q.to_text() for q in r.question] == ["example.com. IN A"]


def test_malformed_queries_get_formerr_and_non_queries_are_dropped() -> None:
    wire = dns.message.make_query("web", "A").to_wire()
    broken = wire[:-3]  # the question runs off the end
    reply = answer(broken, RECORDS, CLIENT, random.Random(1))
    assert isinstance(reply, Answer)
    assert reply.wire[:2] == wire[:2] and reply.wire[2] & 0x80
    assert reply.wire[3] & 0x0F == dns.rcode.FORMERR
    assert isinstance(answer(wire[:11], RECORDS, CLIENT, random.Random(1)), Drop)
    response = dns.message.make_response(dns.message.from_wire(wire)).to_wire()
    assert isinstance(answer(response, RECORDS, CLIENT, random.Random(1)), Drop)


def test_records_update_replaces_one_network() -> None:
    records = RECORDS.with_network(NetworkEntry(FRONT, "front", (ServiceEntry(
        name="web", service_id="websvcid", tasks=(task("web", 4, "10.0.1.8"),)),)))
    assert addresses(query("web", records=records)) == {"10.0.1.8"}
    assert addresses(query("api", records=records)) == {"10.0.2.2"}, "other networks are kept"
    assert isinstance(answer(dns.message.make_query("web", "A").to_wire(), RECORDS.without_network(FRONT),
                             CLIENT, random.Random(1)), Forward)


def test_service_names_win_over_task_names_on_one_network() -> None:
    clash = ServiceEntry(name="cache", service_id="cacheid", vip=parse_address("10.0.5.2"),
                         tasks=(task("cache", 1, "10.0.5.5", hostname="web"),))
    records = RECORDS.with_network(NetworkEntry(FRONT, "front", (WEB, clash)))
    assert addresses(query("web", records=records)) == {"10.0.1.5", "10.0.1.6", "10.0.1.7"}


def test_entries_validate_and_normalise() -> None:
    with pytest.raises(ValueError, match="endpoint mode"):
        ServiceEntry(name="x", service_id="x", endpoint_mode="round-robin")  # type: ignore[arg-type]
    assert API.vip == ipaddress.ip_address("10.0.2.2")
    assert WEB_TASKS[0].address == ipaddress.ip_address("10.0.1.5")
    assert RECORDS.network(FRONT) is not None and RECORDS.network("nope") is None
    assert set(RECORDS.network_ids) == {FRONT, BACK, OTHER}
