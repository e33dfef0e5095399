"""The data plane's pure planning (ingress/dataplane): slots, transactions, drain, read-back.

No kernel here: a small model of nftables maps replays each planned transaction, so the
tests check that a plan takes what the kernel holds to exactly the layout it promises, that
it touches only what changed, and that it flushes exactly the backends gone for good.
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.dataplane.plan import (
    RULE_PREF,
    LbLayout,
    Plan,
    VipLayout,
    lb_removal,
    plan_lb,
    plan_mesh,
    plan_publish,
    plan_task,
    plan_vips,
    vip_chain,
    vip_map,
)
from ingress.dataplane.readback import aliases, lb_layout, mesh_layout, publish_layout, task_layout, vip_layout
from ingress.dataplane.slots import DRAIN_BASE, Slots, element_diff, reslot
from ingress.dataplane.spec import (
    ClientAddress,
    IngressBackend,
    IngressNode,
    LbNetwork,
    Mesh,
    PublishedPort,
    TaskIngress,
    TaskVips,
    VipService,
)
from model.endpoint import endpoint_mac as mac_from_ip

LB = IPv4Address("10.0.0.2")


def ip(n: int) -> IPv4Address:
    return IPv4Address(int(IPv4Address("10.0.8.0")) + n)


def vip(n: int) -> IPv4Address:
    return IPv4Address(int(IPv4Address("10.0.100.0")) + n)


def net(*services: VipService) -> LbNetwork:
    return LbNetwork(LB, "eth0", services)


# ---------------------------------------------------------------- a model of the kernel's maps


class Kernel:
    """Maps and chains of one table, driven by the element/map/chain lines of our scripts."""

    def __init__(self) -> None:
        self.maps: dict[str, dict[str, str]] = {}
        self.chains: dict[str, list[str]] = {}

    def apply(self, script: str) -> None:
        for line in script.splitlines():
            if m := re.match(r"(add|delete) element ip \S+ (\S+) \{ (.*) \}$", line):
                op, name, body = m.groups()
                target = self.maps.setdefault(name, {})
                for item in body.split(", "):
                    if op == "add":
                        key, _, value = item.partition(" : ")
                        assert key not in target, f"add of an existing key: {line}"
                        target[key] = value
                    else:
                        assert item in target, f"delete of a missing key: {line}"
                        del target[item]
            elif m := re.match(r"add map ip \S+ (\S+) ", line):
                assert m.group(1) not in self.maps
                self.maps[m.group(1)] = {}
            elif m := re.match(r"delete map ip \S+ (\S+)$", line):
                del self.maps[m.group(1)]
            elif m := re.match(r"add chain ip \S+ (\S+)$", line):
                self.chains[m.group(1)] = []
            elif m := re.match(r"delete chain ip \S+ (\S+)$", line):
                del self.chains[m.group(1)]
            elif m := re.match(r"flush chain ip \S+ (\S+)$", line):
                self.chains[m.group(1)] = []
            elif m := re.match(r"add rule ip \S+ (\S+) (.*)$", line):
                self.chains.setdefault(m.group(1), []).append(m.group(2))
            elif m := re.match(r"table ip \S+ \{ map vips", line):
                self.maps.setdefault("vips", {})

    def lb_matches(self, layout: LbLayout | VipLayout) -> None:
        for v, slots in layout.services.items():
            assert self.maps[vip_map(v)] == {str(k): str(b) for k, b in slots.elements}
            rules = self.chains[vip_chain(v)]
            if slots.modulus:
                assert rules == [f"dnat ip to numgen inc mod {slots.modulus} map @{vip_map(v)}"]
            else:
                assert rules == []
        assert set(self.maps["vips"]) == {str(v) for v in layout.vmap}
        assert {k for k in self.maps if k.startswith("vb-")} == {vip_map(v) for v in layout.services}


# ---------------------------------------------------------------- slots


backends = st.lists(st.integers(0, 40), unique=True, max_size=12)


@given(backends, backends, backends, backends)
@settings(max_examples=300)
def test_reslot_is_dense_keeps_who_stays_and_changes_in_proportion(a: list[int], da: list[int],
                                                                    b: list[int], db: list[int]) -> None:
    da = [x for x in da if x not in a]
    db = [x for x in db if x not in b]
    old = reslot(None, a, da)
    new = reslot(old, b, db)
    assert new.dense and sorted(new.active) == sorted(b) and new.modulus == len(b)
    assert sorted(new.draining) == sorted(db)
    assert all(k >= DRAIN_BASE for k, x in new.elements if x in db)
    old_slot = {x: k for k, x in old.elements}
    for k, x in new.elements:
        if x in a and x in b and old_slot[x] < len(b):
            assert k == old_slot[x], "a backend that stays keeps its slot"
    deletes, adds = element_diff(old, new)
    moved_in = len(set(b) ^ set(a))
    drained = len(set(db) ^ set(da))
    # a backend that leaves costs its slot's delete plus, to keep the map dense, moving the last
    # backend into the hole (a delete and an add): 3 changes, as with a=[0, 2, 1] -> b=[0, 1]
    assert len(deletes) + len(adds) <= 3 * moved_in + 2 * drained
    assert reslot(new, b, db) == new, "idempotent"


def test_reslot_fills_holes_with_newcomers_then_closes_them_from_the_end() -> None:
    old = reslot(None, ["a", "b", "c", "d"], [])
    assert old.active == ("a", "b", "c", "d")
    assert reslot(old, ["a", "c", "d", "e"], []).active == ("a", "e", "c", "d")
    assert reslot(old, ["a", "c", "d"], ["b"]).active == ("a", "d", "c")
    assert reslot(old, ["a", "c", "d"], ["b"]).draining == ("b",)
    assert reslot(old, [], []).elements == ()


# ---------------------------------------------------------------- VIP plans


def test_a_vip_plan_builds_maps_chains_and_aliases_and_is_idempotent() -> None:
    want = net(VipService(vip(1), (ip(1), ip(2))), VipService(vip(2)))
    first = plan_lb(None, want)
    kernel = Kernel()
    kernel.apply(first.script)
    kernel.lb_matches(first.layout)
    assert first.after_ip == (f"address replace {vip(1)}/32 dev eth0", f"address replace {vip(2)}/32 dev eth0")
    assert ("net/ipv4/ip_forward", "1") in first.sysctls
    assert "ct status dnat snat ip to 10.0.0.2" in first.script
    again = plan_lb(first.layout, want)
    assert again.empty and again.script == "", again


def _many(n: int) -> list[VipService]:
    return [VipService(vip(i), (ip(i % 50), ip(50 + i % 50))) for i in range(n)]


def test_one_change_among_a_thousand_services_is_a_few_commands_about_that_service_only() -> None:
    services = _many(1000)
    base = plan_lb(None, net(*services))
    assert base.commands == 5 + 4 * 1000 + 1
    kernel = Kernel()
    kernel.apply(base.script)

    def step(new: list[VipService], layout: LbLayout) -> Plan[LbLayout]:
        plan = plan_lb(layout, net(*new))
        kernel.apply(plan.script)
        kernel.lb_matches(plan.layout)
        return plan

    changed = list(services)
    changed[500] = VipService(vip(500), (ip(0), ip(50), ip(7)))           # one backend more
    p = step(changed, base.layout)
    assert p.commands == 3 and all(f"{int(vip(500)):08x}" in line for line in p.script.splitlines()), p.script

    replaced = list(changed)
    replaced[500] = VipService(vip(500), (ip(0), ip(9), ip(7)))           # one backend for another
    p2 = step(replaced, p.layout)
    assert p2.commands == 2, p2.script                                   # delete + add, modulus unchanged
    assert p2.flush and {f.args for f in p2.flush} == {("-d", str(vip(500)), "-r", str(ip(50)))}

    added = [*replaced, VipService(vip(1000), (ip(1),))]
    p3 = step(added, p2.layout)
    assert p3.commands == 5 and p3.after_ip == (f"address replace {vip(1000)}/32 dev eth0",)

    removed = added[:1000]
    p4 = step(removed, p3.layout)
    assert p4.commands == 3 and p4.after_ip == (f"address del {vip(1000)}/32 dev eth0",)
    assert {f.args for f in p4.flush} == {("-d", str(vip(1000)), "-r", str(ip(1)))}


def test_drain_is_no_new_connections_and_only_gone_for_good_is_flushed() -> None:
    a, b, c = ip(1), ip(2), ip(3)
    p0 = plan_lb(None, net(VipService(vip(1), (a, b, c))))
    kernel = Kernel()
    kernel.apply(p0.script)

    p1 = plan_lb(p0.layout, net(VipService(vip(1), (a, c), (b,))))
    kernel.apply(p1.script)
    kernel.lb_matches(p1.layout)
    assert p1.flush == ()
    assert b not in p1.layout.services[vip(1)].active and b in p1.layout.services[vip(1)].draining
    assert "mod 2 map" in p1.script

    back = plan_lb(p1.layout, net(VipService(vip(1), (a, b, c))))
    assert back.flush == () and b in back.layout.services[vip(1)].active

    gone = plan_lb(p1.layout, net(VipService(vip(1), (a, c))))
    assert [f.args for f in gone.flush] == [("-d", str(vip(1)), "-r", str(b))]

    straight = plan_lb(p0.layout, net(VipService(vip(1), (a,))))
    assert sorted(f.args for f in straight.flush) == [("-d", str(vip(1)), "-r", str(b)),
                                                      ("-d", str(vip(1)), "-r", str(c))]

    service_gone = plan_lb(p1.layout, net())
    assert sorted(f.args[-1] for f in service_gone.flush) == sorted(map(str, (a, b, c)))
    assert service_gone.after_ip == (f"address del {vip(1)}/32 dev eth0",)

    removal = lb_removal(p1.layout, "eth0")
    assert removal.script.endswith("delete table ip shoal-lb\n") and len(removal.flush) == 3


def test_a_fresh_rewrite_is_whole_and_still_flushes_against_what_was_held() -> None:
    p0 = plan_lb(None, net(VipService(vip(1), (ip(1), ip(2)))))
    fresh = plan_lb(p0.layout, net(VipService(vip(1), (ip(1),))), fresh=True)
    assert fresh.script.startswith("table ip shoal-lb {}\ndelete table ip shoal-lb\ntable ip shoal-lb {")
    kernel = Kernel()
    kernel.apply(fresh.script)
    kernel.lb_matches(fresh.layout)
    assert [f.args for f in fresh.flush] == [("-d", str(vip(1)), "-r", str(ip(2)))]


def test_specs_refuse_what_could_not_be_programmed() -> None:
    with pytest.raises(ValueError, match="twice"):
        VipService(vip(1), (ip(1), ip(1)))
    with pytest.raises(ValueError, match="both in rotation and draining"):
        VipService(vip(1), (ip(1),), (ip(1),))
    with pytest.raises(ValueError, match="one of its backends"):
        VipService(vip(1), (vip(1),))
    with pytest.raises(ValueError, match="twice"):
        net(VipService(vip(1)), VipService(vip(1)))
    with pytest.raises(ValueError, match="invalid interface"):
        LbNetwork(LB, "a very long interface name")
    with pytest.raises(ValueError, match="protocol"):
        PublishedPort("icmp", 80)
    with pytest.raises(ValueError, match="port"):
        PublishedPort("tcp", 0)
    with pytest.raises(ValueError, match="target port"):
        IngressBackend(ip(1), 70000)
    assert IngressNode(IPv4Address("10.255.0.2")).mac == "02:42:0a:ff:00:02" == mac_from_ip(IPv4Address("10.255.0.2"))
    assert IngressNode(IPv4Address("10.255.0.2")).mark == 0x0AFF0002


# ---------------------------------------------------------------- routing mesh


def _mesh(*ports: PublishedPort, mode: ClientAddress = ClientAddress.PRESERVE) -> Mesh:
    return Mesh(IPv4Address("10.255.0.2"), IPv4Address("172.18.0.2"), "gw0", ports, mode)


def _be(n: int, port: int = 80) -> IngressBackend:
    return IngressBackend(ip(n), port)


def test_mesh_plans_translate_the_port_per_backend_and_drain_like_vips() -> None:
    web = PublishedPort("tcp", 8080, (_be(1), _be(2, 8000)))
    p0 = plan_mesh(None, _mesh(web, PublishedPort("udp", 53, (_be(1, 53),))))
    assert f"0 : {ip(1)} . 80, 1 : {ip(2)} . 8000" in p0.script
    assert "typeof numgen inc mod 1 : ip daddr . udp dport" in p0.script
    assert "snat" not in p0.script, "PRESERVE: the ingress namespace only DNATs"
    assert plan_mesh(p0.layout, _mesh(web, PublishedPort("udp", 53, (_be(1, 53),)))).empty

    draining = plan_mesh(p0.layout, _mesh(PublishedPort("tcp", 8080, (_be(2, 8000),), (_be(1),)),
                                          PublishedPort("udp", 53, (_be(1, 53),))))
    assert draining.flush == () and draining.commands <= 4, draining.script
    gone = plan_mesh(draining.layout, _mesh(PublishedPort("tcp", 8080, (_be(2, 8000),))))
    assert sorted(f.args for f in gone.flush) == sorted([
        ("-p", "tcp", "--orig-port-dst", "8080", "-r", str(ip(1)), "--reply-port-src", "80"),
        ("-p", "udp", "--orig-port-dst", "53", "-r", str(ip(1)), "--reply-port-src", "53")])
    assert "delete chain ip shoal-mesh p-udp-53" in gone.script

    snat = plan_mesh(gone.layout, _mesh(PublishedPort("tcp", 8080, (_be(2, 8000),)), mode=ClientAddress.SNAT))
    assert "add rule ip shoal-mesh post ct status dnat snat ip to 10.255.0.2" in snat.script
    assert "pb-" not in snat.script, "a mode change rewrites the fixed rules only"


def test_publish_plans_are_one_set_element_per_port() -> None:
    p0 = plan_publish(None, _mesh(PublishedPort("tcp", 8080), PublishedPort("udp", 53)))
    assert "fib daddr type local meta l4proto . th dport @ports dnat ip to 172.18.0.2" in p0.script
    assert 'oifname "gw0" fib saddr type local masquerade' in p0.script
    assert ("net/ipv4/conf/gw0/route_localnet", "1") in p0.sysctls
    p1 = plan_publish(p0.layout, _mesh(PublishedPort("tcp", 8080), PublishedPort("tcp", 443)))
    assert p1.script == ("delete element ip shoal-publish ports { udp . 53 }\n"
                         "add element ip shoal-publish ports { tcp . 443 }\n")
    assert plan_publish(p1.layout, _mesh(PublishedPort("tcp", 443), PublishedPort("tcp", 8080))).empty


def test_task_plans_route_new_nodes_before_marking_for_them_and_unroute_after() -> None:
    n1, n2 = IngressNode(IPv4Address("10.255.0.2")), IngressNode(IPv4Address("10.255.0.3"))
    want = TaskIngress("eth0", ip(1), (("tcp", 80),), (n1,))
    p0 = plan_task(None, want)
    assert p0.before_ip == (f"route replace default via 10.255.0.2 dev eth0 table {n1.mark}",
                            f"rule add pref {RULE_PREF} fwmark {n1.mark:#x} lookup {n1.mark}")
    assert f"add element ip shoal-task nodes {{ {n1.mac} : {n1.mark:#010x} }}" in p0.script
    assert ("net/ipv4/tcp_fwmark_accept", "1") in p0.sysctls
    assert plan_task(p0.layout, want).empty

    p1 = plan_task(p0.layout, TaskIngress("eth0", ip(1), (("tcp", 80),), (n2,)))
    assert p1.before_ip == (f"route replace default via 10.255.0.3 dev eth0 table {n2.mark}",
                            f"rule add pref {RULE_PREF} fwmark {n2.mark:#x} lookup {n2.mark}")
    assert p1.after_ip == (f"rule del pref {RULE_PREF} fwmark {n1.mark:#x} lookup {n1.mark}",
                           f"route flush table {n1.mark}")
    assert p1.script == (f"delete element ip shoal-task nodes {{ {n1.mac} }}\n"
                         f"add element ip shoal-task nodes {{ {n2.mac} : {n2.mark:#010x} }}\n")


# ---------------------------------------------------------------- read-back


def _nft_json(*objects: dict) -> str:
    return json.dumps({"nftables": [{"metainfo": {"version": "1.0.6"}}, *objects]})


def _lb_doc(extra: tuple[dict, ...] = ()) -> str:
    """What `nft -j list table ip shoal-lb` printed on this kernel for one VIP with two
    backends in rotation and one draining."""
    return _nft_json(
        {"table": {"family": "ip", "name": "shoal-lb"}},
        {"map": {"name": "vips", "type": "ipv4_addr", "map": "verdict",
                 "elem": [["10.0.1.5", {"goto": {"target": "v-0a000105"}}]]}},
        {"map": {"name": "vb-0a000105", "type": "integer", "map": "ipv4_addr",
                 "elem": [[0, "10.0.1.7"], [1, "10.0.1.8"], [2147483648, "10.0.1.9"]]}},
        {"chain": {"name": "pre"}}, {"chain": {"name": "post"}}, {"chain": {"name": "v-0a000105"}},
        {"rule": {"chain": "v-0a000105", "expr": [{"dnat": {"addr": {"map": {
            "key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}}, "data": "@vb-0a000105"}}}}]}},
        *extra)


def test_read_back_gives_the_layout_the_plan_made_and_spots_foreign_shapes() -> None:
    want = net(VipService(IPv4Address("10.0.1.5"), (IPv4Address("10.0.1.7"), IPv4Address("10.0.1.8")),
                          (IPv4Address("10.0.1.9"),)))
    planned = plan_lb(None, want).layout
    found = lb_layout(_lb_doc())
    assert found.consistent and found.layout is not None
    assert found.layout.services == planned.services and found.layout.vmap == planned.vmap
    adopted = plan_lb(LbLayout(None, found.layout.services, found.layout.vmap, planned.aliases, True), want)
    assert "vb-" not in adopted.script and adopted.flush == () and adopted.after_ip == ()

    stray = lb_layout(_lb_doc(({"chain": {"name": "v-deadbeef"}},)))
    assert not stray.consistent
    sparse = json.loads(_lb_doc())
    sparse["nftables"][3]["map"]["elem"][1][0] = 5
    assert not lb_layout(json.dumps(sparse)).consistent

    addr = json.dumps([{"addr_info": [{"family": "inet", "local": "10.0.0.2", "prefixlen": 16},
                                      {"family": "inet", "local": "10.0.1.5", "prefixlen": 32}]}])
    assert aliases(addr, LB) == {IPv4Address("10.0.1.5")}


def test_a_tasks_own_vip_plan_is_the_lbs_maps_from_the_output_hook_without_snat() -> None:
    a, b = VipService(vip(1), (ip(1), ip(2))), VipService(vip(2), (ip(3),))
    first = plan_vips(None, TaskVips((a, b)))
    kernel = Kernel()
    kernel.apply(first.script)
    kernel.lb_matches(first.layout)
    assert "type nat hook output" in first.script and "prerouting" not in first.script
    assert "snat" not in first.script and "masquerade" not in first.script
    assert "tcp flags & (syn | ack) == syn ip daddr vmap @vips" in first.script, "TCP only from its SYN"
    assert (first.before_ip, first.after_ip, first.flush) == ((), (), ())
    assert first.sysctls == (("net/ipv4/tcp_timestamps", "2"),), "set where the table is first made"
    assert plan_vips(first.layout, TaskVips((a, b))).empty

    # Draining: no flush; gone for good (or the whole VIP): its flows are flushed.
    drain = plan_vips(first.layout, TaskVips((VipService(vip(1), (ip(2),), (ip(1),)), b)))
    kernel.apply(drain.script)
    kernel.lb_matches(drain.layout)
    assert drain.flush == () and drain.commands <= 4, drain.script
    gone = plan_vips(drain.layout, TaskVips((VipService(vip(1), (ip(2),)),)))
    kernel.apply(gone.script)
    kernel.lb_matches(gone.layout)
    assert {f.args for f in gone.flush} == {("-d", str(vip(1)), "-r", str(ip(1))),
                                           ("-d", str(vip(2)), "-r", str(ip(3)))}

    # Nothing wanted where nothing is: no table (a task on a network without VIPs).
    assert plan_vips(None, TaskVips()).empty and plan_vips(VipLayout(), TaskVips()).empty
    with pytest.raises(ValueError, match="appears twice"):
        TaskVips((a, VipService(vip(1))))


def test_read_back_of_a_tasks_vip_table() -> None:
    doc = json.loads(_lb_doc())
    doc["nftables"] = [o for o in doc["nftables"] if o.get("chain", {}).get("name") not in ("pre", "post")]
    assert not vip_layout(json.dumps(doc)).consistent, "no output chain: not as written"
    doc["nftables"].append({"chain": {"name": "out"}})
    found = vip_layout(json.dumps(doc))
    assert found.consistent and found.layout is not None and not found.layout.based
    want = TaskVips((VipService(IPv4Address("10.0.1.5"), (IPv4Address("10.0.1.7"), IPv4Address("10.0.1.8")),
                                (IPv4Address("10.0.1.9"),)),))
    adopted = plan_vips(found.layout, want)
    assert "vb-" not in adopted.script and adopted.flush == () and "chain out" in adopted.script
    assert adopted.sysctls == (), "a table that exists: its namespace's sysctls are left as they are"
    assert not lb_layout(json.dumps(doc)).consistent, "an LB table has pre and post"


def test_read_back_of_the_mesh_the_daemon_side_and_a_task() -> None:
    mesh = mesh_layout(_nft_json(
        {"map": {"name": "ports", "elem": [[{"concat": ["tcp", 8080]}, {"goto": {"target": "p-tcp-8080"}}]]}},
        {"map": {"name": "pb-tcp-8080", "elem": [[0, {"concat": ["10.255.0.10", 80]}]]}},
        {"chain": {"name": "pre"}}, {"chain": {"name": "post"}}, {"chain": {"name": "p-tcp-8080"}},
        {"rule": {"chain": "p-tcp-8080", "expr": [{"match": {}}, {"dnat": {"family": "ip", "addr": {"map": {
            "key": {"numgen": {"mode": "inc", "mod": 1, "offset": 0}}, "data": "@pb-tcp-8080"}}}}]}}))
    assert mesh.consistent and mesh.layout is not None
    assert mesh.layout.ports == {("tcp", 8080): Slots(((0, IngressBackend(IPv4Address("10.255.0.10"), 80)),), 1)}

    pub = publish_layout(_nft_json({"set": {"name": "ports", "elem": [{"concat": ["udp", 53]}]}},
                                   {"chain": {"name": "pre"}}, {"chain": {"name": "out"}}, {"chain": {"name": "post"}}))
    assert pub.consistent and pub.layout is not None and pub.layout.ports == {("udp", 53)}

    rules = json.dumps([{"priority": 0, "table": "local"},
                        {"priority": RULE_PREF, "fwmark": "0xaff0002", "table": "184483842"}])
    routes = json.dumps([{"dst": "default", "gateway": "10.255.0.2", "dev": "eth0", "table": "184483842"},
                         {"dst": "default", "gateway": "172.19.0.1", "dev": "eth1"}])
    task = task_layout(_nft_json(
        {"set": {"name": "ports", "elem": [{"concat": ["tcp", 80]}]}},
        {"map": {"name": "nodes", "elem": [["02:42:0a:ff:00:02", 184483842]]}},
        {"set": {"name": "udpflows"}},
        *({"chain": {"name": c}} for c in ("pre", "in", "fixsrc", "route", "out"))), rules, routes)
    assert task.consistent and task.layout is not None
    want = TaskIngress("eth0", IPv4Address("10.255.0.10"), (("tcp", 80),), (IngressNode(IPv4Address("10.255.0.2")),))
    adopted = plan_task(task.layout, want)
    assert adopted.before_ip == () and adopted.after_ip == () and "add element" not in adopted.script
