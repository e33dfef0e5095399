"""A task's /etc/resolv.conf, and the upstream resolvers taken from the host's.

The task's file is the host's with every nameserver replaced by the embedded server at
127.0.0.11: search domains (`search`/`domain`) and options are kept, and `options ndots:0` is
added unless the host already sets ndots (so a dotted service name such as `tasks.web` is tried
as it is before any search domain is appended).

Upstreams are the host's nameservers, at most three (glibc's MAXNS), in file order. Skipped:
127.0.0.11 itself (it would be a loop) and scoped IPv6 link-local addresses. A host file
without nameservers gives no upstream, and forwarded queries then fail with SERVFAIL: shoal does
not fall back to a public resolver behind the operator's back (Docker falls back to 8.8.8.8).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ingress.dns.records import IPAddress

EMBEDDED_ADDRESS = "127.0.0.11"
MAX_UPSTREAMS = 3
DNS_PORT = 53


@dataclass(frozen=True)
class Upstream:
    address: IPAddress
    port: int = DNS_PORT

    @property
    def host_loopback(self) -> bool:
        """On the host's loopback (127.0.0.0/8, ::1): reachable only from the daemon's own
        network namespace, so dialled from there rather than from the container's."""
        return self.address.is_loopback

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


def _lines(text: str) -> list[list[str]]:
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if line:
            found.append(line.split())
    return found


def upstreams(host_resolv_conf: str) -> list[Upstream]:
    """The host's nameservers the embedded DNS forwards to (port 53, at most three)."""
    found: list[Upstream] = []
    for words in _lines(host_resolv_conf):
        if words[0] != "nameserver" or len(words) < 2:
            continue
        try:
            address = ipaddress.ip_address(words[1])
        except ValueError:
            continue
        if str(address) == EMBEDDED_ADDRESS or getattr(address, "scope_id", None):
            continue
        upstream = Upstream(address)
        if upstream not in found:
            found.append(upstream)
        if len(found) == MAX_UPSTREAMS:
            break
    return found


def resolv_conf(host_resolv_conf: str) -> str:
    """The /etc/resolv.conf of a task, from the text of the host's."""
    search: list[str] | None = None
    options: list[str] = []
    for words in _lines(host_resolv_conf):
        if words[0] in ("search", "domain"):  # the last of either wins, as in glibc
            search = words[1:]
        elif words[0] == "options":
            options += [o for o in words[1:] if o not in options]
    if not any(o.startswith("ndots:") for o in options):
        options.append("ndots:0")
    out = [f"nameserver {EMBEDDED_ADDRESS}"]
    if search:
        out.append("search " + " ".join(search))
    out.append("options " + " ".join(options))
    return "\n".join(out) + "\n"
