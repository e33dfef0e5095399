"""The iproute2 batch lines the plans write (plan.py), carried out through netlink in-process.

A plan's `before_ip`/`after_ip` are lines of `ip -batch` syntax, which stays their description
(tests and logs read them). The forms plan.py writes are executed here with pyroute2 on the
calling thread (one that joined the namespace: kernel.py); a line of any other form makes the
whole batch go to `ip -force -batch` instead. As with `-force`, every line is tried and the
failures are raised together afterwards.

  address replace|del A/N dev D
  route replace default via G dev D table T
  route flush table T
  rule add|del pref P fwmark M lookup T
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

Step = Callable[[IPRoute], None]


class Unsupported(ValueError):
    """A line of a form this module does not carry out."""


def _index(ipr: IPRoute, device: str) -> int:
    found = ipr.link_lookup(ifname=device)
    if not found:
        raise NetlinkError(errno.ENODEV, f"Cannot find device \"{device}\"")
    return int(found[0])


def _address(op: str, address: IPv4Interface, device: str) -> Step:
    def step(ipr: IPRoute) -> None:
        index = _index(ipr, device)
        if op == "replace":
            ipr.addr("replace", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        else:
            ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
    return step


def _default_route(gateway: IPv4Address, device: str, table: int) -> Step:
    def step(ipr: IPRoute) -> None:
        ipr.route("replace", dst="0.0.0.0/0", gateway=str(gateway), oif=_index(ipr, device), table=table)
    return step


def _flush_table(table: int) -> Step:
    def step(ipr: IPRoute) -> None:
        for route in ipr.route("dump", family=socket.AF_INET, table=table):
            if route.get("RTA_TABLE", route["table"]) != table:
                continue
            try:
                ipr.route("del", **_route_key(route, table))
            except NetlinkError as exc:
                if exc.code not in (errno.ESRCH, errno.ENOENT):
                    raise
    return step


def _route_key(route: Any, table: int) -> dict[str, Any]:
    key: dict[str, Any] = {"table": table, "dst_len": route["dst_len"], "tos": route["tos"],
                           "type": route["type"], "scope": route["scope"]}
    dst = route.get("RTA_DST")
    if dst:
        key["dst"] = dst
    oif = route.get("RTA_OIF")
    if oif:
        key["oif"] = oif
    gateway = route.get("RTA_GATEWAY")
    if gateway:
        key["gateway"] = gateway
    return key


def _rule(op: str, pref: int, fwmark: int, table: int) -> Step:
    def step(ipr: IPRoute) -> None:
        ipr.rule(op, family=socket.AF_INET, priority=pref, fwmark=fwmark, table=table)
    return step


def parse(line: str) -> Step:
    """The netlink step of one line; Unsupported for any other form."""
    w = line.split()
    try:
        if len(w) == 5 and w[0] == "address" and w[1] in ("replace", "del") and w[3] == "dev":
            return _address(w[1], IPv4Interface(w[2]), w[4])
        if len(w) == 9 and w[:4] == ["route", "replace", "default", "via"] and w[5] == "dev" and w[7] == "table":
            return _default_route(IPv4Address(w[4]), w[6], int(w[8]))
        if len(w) == 4 and w[:3] == ["route", "flush", "table"]:
            return _flush_table(int(w[3]))
        if (len(w) == 8 and w[0] == "rule" and w[1] in ("add", "del") and w[2] == "pref" and w[4] == "fwmark"
                and w[6] == "lookup"):
            return _rule(w[1], int(w[3]), int(w[5], 0), int(w[7]))
    except ValueError as exc:
        raise Unsupported(f"{line!r}: {exc}") from None
    raise Unsupported(repr(line))


def run_lines(lines: Sequence[str]) -> list[str]:
    """Carry out every line in this thread's namespace; the failures, as `line: error`."""
    steps = [parse(line) for line in lines]      # Unsupported before anything is done
    failures = []
    with IPRoute(groups=0) as ipr:
        for line, step in zip(lines, steps, strict=True):
            try:
                step(ipr)
            except (NetlinkError, OSError) as exc:
                failures.append(f"{line}: {exc}")
    return failures
