"""Reading the kernel back into layouts (pure: text in, layout out).

After a daemon restart nothing is known but what the kernel holds. `nft -j list table` gives
the maps and chains a previous life wrote, `ip -j` the aliases, rules and routes; these
functions turn them into the layouts plan.py diffs against, so a restarted daemon changes
only what differs (and still flushes the connections of backends that left meanwhile: the
drain records are in the maps).

The fixed part of each table (base chains) is not parsed: a read-back layout has base=None,
and the first plan rewrites those few rules. A table in a shape this code would never have
written (a map without its chain, a verdict pointing elsewhere, a sparse rotation) comes back
with `consistent=False`; the caller then rewrites the whole table in one transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Generic, TypeVar

from ingress.dataplane.plan import (
    RULE_PREF,
    LbLayout,
    MeshLayout,
    PublishLayout,
    TaskLayout,
    VipLayout,
    port_chain,
    vip_chain,
)
from ingress.dataplane.slots import Slots
from ingress.dataplane.spec import PROTOCOLS, IngressBackend

L = TypeVar("L")

_VIP_MAP = re.compile(r"^vb-([0-9a-f]{8})$")
_VIP_CHAIN = re.compile(r"^v-([0-9a-f]{8})$")
_PORT_MAP = re.compile(r"^pb-([a-z]+)-(\d{1,5})$")
_PORT_CHAIN = re.compile(r"^p-([a-z]+)-(\d{1,5})$")


@dataclass(frozen=True)
class ReadBack(Generic[L]):
    layout: L | None            # None: the table does not exist
    consistent: bool = True


@dataclass
class _Table:
    maps: dict[str, list[Any]]           # name → elem list (sets too)
    chains: set[str]
    rules: dict[str, list[list[Any]]]    # chain → expr lists


def _objects(text: str) -> _Table:
    doc = json.loads(text)
    maps: dict[str, list[Any]] = {}
    chains: set[str] = set()
    rules: dict[str, list[list[Any]]] = {}
    for obj in doc.get("nftables", []):
        if "map" in obj:
            maps[obj["map"]["name"]] = list(obj["map"].get("elem", []))
        elif "set" in obj:
            maps[obj["set"]["name"]] = list(obj["set"].get("elem", []))
        elif "chain" in obj:
            chains.add(obj["chain"]["name"])
        elif "rule" in obj:
            rules.setdefault(obj["rule"]["chain"], []).append(obj["rule"].get("expr", []))
    return _Table(maps, chains, rules)


def _elem_value(elem: Any) -> Any:
    """A set element may come as a value or as {"elem": {"val": value, ...}} (timeouts, comments)."""
    if isinstance(elem, dict) and "elem" in elem:
        return elem["elem"].get("val")
    return elem


def _modulus(rules: list[list[Any]] | None) -> int | None:
    """The numgen modulus of a service chain's one rule; 0 for an empty chain; None otherwise."""
    if not rules:
        return 0
    if len(rules) != 1:
        return None
    for expr in rules[0]:
        try:
            return int(expr["dnat"]["addr"]["map"]["key"]["numgen"]["mod"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _goto(value: Any) -> str | None:
    try:
        return str(value["goto"]["target"])
    except (KeyError, TypeError):
        return None


def _vip_maps(t: _Table) -> tuple[dict[IPv4Address, Slots[IPv4Address]], frozenset[IPv4Address], bool]:
    """The VIPs' backend maps and verdict-map elements of an LB or task VIP table."""
    ok = "vips" in t.maps
    services: dict[IPv4Address, Slots[IPv4Address]] = {}
    for name, elems in t.maps.items():
        m = _VIP_MAP.match(name)
        if not m:
            continue
        vip = IPv4Address(int(m.group(1), 16))
        try:
            slots = Slots.of({int(k): IPv4Address(v) for k, v in map(_elem_value, elems)},
                             _modulus(t.rules.get(vip_chain(vip))))
        except (TypeError, ValueError):
            ok = False
            continue
        ok = ok and vip_chain(vip) in t.chains and slots.dense and slots.modulus == len(slots.active)
        services[vip] = slots
    ok = ok and all(IPv4Address(int(m.group(1), 16)) in services
                    for m in map(_VIP_CHAIN.match, t.chains) if m)
    vmap: set[IPv4Address] = set()
    for elem in t.maps.get("vips", []):
        try:
            key, verdict = _elem_value(elem)
            vip = IPv4Address(key)
        except (TypeError, ValueError):
            ok = False
            continue
        ok = ok and vip in services and _goto(verdict) == vip_chain(vip)
        vmap.add(vip)
    return services, frozenset(vmap), ok


def lb_layout(text: str) -> ReadBack[LbLayout]:
    t = _objects(text)
    services, vmap, ok = _vip_maps(t)
    return ReadBack(LbLayout(None, services, vmap, frozenset(), exists=True), ok and {"pre", "post"} <= t.chains)


def vip_layout(text: str) -> ReadBack[VipLayout]:
    t = _objects(text)
    services, vmap, ok = _vip_maps(t)
    return ReadBack(VipLayout(False, services, vmap, exists=True), ok and "out" in t.chains)


def _backend(value: Any) -> IngressBackend:
    addr, port = value["concat"]
    return IngressBackend(IPv4Address(addr), int(port))


def _proto_port(value: Any) -> tuple[str, int]:
    proto, port = value["concat"]
    if proto not in PROTOCOLS:
        raise ValueError(proto)
    return str(proto), int(port)


def mesh_layout(text: str) -> ReadBack[MeshLayout]:
    t = _objects(text)
    ok = "ports" in t.maps and {"pre", "post"} <= t.chains
    ports: dict[tuple[str, int], Slots[IngressBackend]] = {}
    for name, elems in t.maps.items():
        m = _PORT_MAP.match(name)
        if not m:
            continue
        key = (m.group(1), int(m.group(2)))
        try:
            slots = Slots.of({int(k): _backend(v) for k, v in map(_elem_value, elems)},
                             _modulus(t.rules.get(port_chain(key))))
        except (KeyError, TypeError, ValueError):
            ok = False
            continue
        ok = ok and port_chain(key) in t.chains and slots.dense and slots.modulus == len(slots.active)
        ports[key] = slots
    ok = ok and all((m.group(1), int(m.group(2))) in ports for m in map(_PORT_CHAIN.match, t.chains) if m)
    vmap: set[tuple[str, int]] = set()
    for elem in t.maps.get("ports", []):
        try:
            raw, verdict = _elem_value(elem)
            key = _proto_port(raw)
        except (KeyError, TypeError, ValueError):
            ok = False
            continue
        ok = ok and key in ports and _goto(verdict) == port_chain(key)
        vmap.add(key)
    return ReadBack(MeshLayout(None, ports, frozenset(vmap), exists=True), ok)


def _port_set(elems: Iterable[Any]) -> tuple[frozenset[tuple[str, int]], bool]:
    out: set[tuple[str, int]] = set()
    ok = True
    for elem in elems:
        try:
            out.add(_proto_port(_elem_value(elem)))
        except (KeyError, TypeError, ValueError):
            ok = False
    return frozenset(out), ok


def publish_layout(text: str) -> ReadBack[PublishLayout]:
    t = _objects(text)
    ports, ok = _port_set(t.maps.get("ports", []))
    ok = ok and "ports" in t.maps and {"pre", "out", "post"} <= t.chains
    return ReadBack(PublishLayout(None, ports, exists=True), ok)


def task_layout(nft_text: str | None, rules_json: str, routes_json: str) -> ReadBack[TaskLayout]:
    """`nft_text` None: the table does not exist (the rules and routes may still)."""
    rules: set[int] = set()
    for rule in json.loads(rules_json or "[]"):
        if rule.get("priority") != RULE_PREF or "fwmark" not in rule:
            continue
        try:
            mark = int(str(rule["fwmark"]).split("/")[0], 0)
            if int(rule.get("table", -1)) == mark:
                rules.add(mark)
        except ValueError:
            continue
    routes: dict[int, IPv4Address] = {}
    for route in json.loads(routes_json or "[]"):
        table = str(route.get("table", ""))
        if route.get("dst") == "default" and table.isdigit() and int(table) >= 1 << 24 and "gateway" in route:
            routes[int(table)] = IPv4Address(route["gateway"])
    if nft_text is None:
        return ReadBack(TaskLayout(None, frozenset(), {}, frozenset(rules), routes, exists=False))
    t = _objects(nft_text)
    ports, ok = _port_set(t.maps.get("ports", []))
    nodes: dict[str, int] = {}
    for elem in t.maps.get("nodes", []):
        try:
            mac, mark = _elem_value(elem)
            nodes[str(mac).lower()] = int(mark)
        except (TypeError, ValueError):
            ok = False
    ok = ok and {"ports", "nodes", "udpflows"} <= set(t.maps) and {"pre", "in", "fixsrc", "route", "out"} <= t.chains
    return ReadBack(TaskLayout(None, ports, nodes, frozenset(rules), routes, exists=True), ok)


def aliases(addr_json: str, own: IPv4Address) -> frozenset[IPv4Address]:
    """The /32 addresses on a device (`ip -j address show dev D`) other than `own`: the VIPs."""
    found: set[IPv4Address] = set()
    for link in json.loads(addr_json or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and info.get("prefixlen") == 32:
                ip = IPv4Address(info["local"])
                if ip != own:
                    found.add(ip)
    return frozenset(found)
