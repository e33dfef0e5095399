"""What an EndpointConfig asks of a local network's endpoint beside its address, checked (a bad
value is an HTTP 400 naming the field): link-local addresses, legacy links, a MAC address and
driver options."""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Any

from engineapi.http import ApiError

MAC_ADDRESS = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def link_local_ips(value: Any) -> list[str]:
    """EndpointConfig.IPAMConfig.LinkLocalIPs: IPv4 link-local addresses (169.254.0.0/16), added
    to the endpoint's interface beside its address."""
    if value in (None, []):
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, "EndpointConfig.IPAMConfig.LinkLocalIPs must be a list of addresses")
    for text in value:
        try:
            address = IPv4Address(text)
        except ValueError:
            raise ApiError(400, f"invalid link-local IP address: {text}") from None
        if not address.is_link_local:
            raise ApiError(400, f"invalid link-local IP address: {text} is not in 169.254.0.0/16")
    return list(value)


def endpoint_extras(config: dict[str, Any]) -> tuple[list[str], str, dict[str, str]]:
    """EndpointConfig's Links ("container:alias"), MacAddress and DriverOpts, checked."""
    links = config.get("Links") or []
    if not isinstance(links, list) or not all(isinstance(link, str) and link.strip(":/") for link in links):
        raise ApiError(400, "EndpointConfig.Links must be a list of \"container:alias\" strings")
    mac = config.get("MacAddress") or ""
    if not isinstance(mac, str) or (mac and not MAC_ADDRESS.match(mac.lower())):
        raise ApiError(400, f"EndpointConfig.MacAddress: invalid MAC address {mac!r}")
    if mac and int(mac[:2], 16) & 1:
        raise ApiError(400, f"EndpointConfig.MacAddress: {mac} is a multicast address")
    options = config.get("DriverOpts") or {}
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise ApiError(400, "EndpointConfig.DriverOpts must map names to strings")
    return list(links), mac.lower(), dict(options)
