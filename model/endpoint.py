"""The MAC address of a network endpoint, as Docker derives it (one rule for the manager, the
overlay data path, the routing mesh and the API)."""

from __future__ import annotations

from ipaddress import IPv4Address


def endpoint_mac(ip: IPv4Address | str) -> str:
    """02:42 followed by the four bytes of the IPv4 address: 10.0.1.5 → 02:42:0a:00:01:05."""
    return "02:42:" + ":".join(f"{b:02x}" for b in IPv4Address(ip).packed)
