"""Choosing the addresses a node listens on and advertises, with errors a user can act on."""

from __future__ import annotations

import ipaddress
import socket

DEFAULT_PORT = 2377


class AddressError(ValueError):
    pass


def split_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"invalid port in address {text!r}")
    return host, int(port)


def _local_ipv4_addresses() -> list[str]:
    """Non-loopback IPv4 addresses of this network namespace (from the kernel's routes)."""
    found: list[str] = []
    try:
        with open("/proc/net/fib_trie") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for i, line in enumerate(lines):
        if "/32 host LOCAL" in line and i > 0:
            addr = lines[i - 1].split()[-1]
            if not ipaddress.ip_address(addr).is_loopback and addr not in found:
                found.append(addr)
    return found


def resolve_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.gethostbyname(host)
    except OSError as e:
        raise AddressError(f"cannot resolve {host!r}: {e}") from None


def choose_advertise(requested: str, configured: str, listen: str) -> str:
    """host:port to advertise: the request's, else the daemon's, else the listen address's,
    else the only non-loopback address of this host."""
    listen_host, listen_port = split_host_port(listen or f"0.0.0.0:{DEFAULT_PORT}")
    for candidate in (requested, configured):
        if candidate:
            host, port = split_host_port(candidate, listen_port)
            return f"{resolve_host(host)}:{port}"
    if listen_host not in ("0.0.0.0", "::", ""):
        return f"{resolve_host(listen_host)}:{listen_port}"
    local = _local_ipv4_addresses()
    if len(local) == 1:
        return f"{local[0]}:{listen_port}"
    if not local:
        raise AddressError("could not find an address to advertise: this host has no non-loopback IPv4 "
                           "address; use --advertise-addr")
    raise AddressError(f"could not choose an IP address to advertise since this system has multiple addresses "
                       f"({', '.join(local)}); use --advertise-addr")
