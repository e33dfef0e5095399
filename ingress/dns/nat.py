"""The nftables rules that put the embedded DNS at 127.0.0.11:53 inside a container's namespace.

The server listens on 127.0.0.11 at two random ports (UDP and TCP) so that it never collides
with anything the container binds. In the container's namespace, table `ip shoal-dns` holds:
  - chain dns-dnat (hook output, priority dstnat = -100): queries to 127.0.0.11:53 are DNATed
    to the random ports;
  - chain dns-snat (hook postrouting, priority srcnat): anything leaving the random ports gets
    source port 53 back (conntrack already undoes the DNAT on replies; this covers the rest,
    as Docker does).
A new namespace gets the table with `create` (fails if it exists, as in a namespace whose rules an
earlier daemon made); otherwise the table is replaced in one nft transaction (add, delete,
define), so a restarted daemon with new ports never leaves a half-old rule set. Deleting a table
(or flushing one) makes the transaction wait for the kernel's grace period: 8-15 ms on this kind
of machine against under a millisecond for a creation, so a sandbox's start never deletes, and a
sandbox whose namespace is about to go never removes its rules. The script runs through libnftables in a thread that
joins the namespace on an fd the daemon holds, so the rules land in the namespace the sockets
were made in even if its path has been reused since.
"""

from __future__ import annotations

import functools

from ingress.dns.netns import run_in_netns
from ingress.nftables import NftError, run_script

TABLE = "shoal-dns"


def nat_script(address: str, udp_port: int, tcp_port: int, *, replace: bool = True) -> str:
    """The table's script: it replaces any table of that name, or (`replace=False`) creates it
    and fails if one exists."""
    head = f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n" if replace else f"create table ip {TABLE}\n"
    return (
        head +
        f"table ip {TABLE} {{\n"
        "  chain dns-dnat {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"    ip daddr {address} udp dport 53 dnat to {address}:{udp_port}\n"
        f"    ip daddr {address} tcp dport 53 dnat to {address}:{tcp_port}\n"
        "  }\n"
        "  chain dns-snat {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {address} udp sport {udp_port} snat to :53\n"
        f"    ip saddr {address} tcp sport {tcp_port} snat to :53\n"
        "  }\n"
        "}\n"
    )


def removal_script() -> str:
    return f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"


class NatError(Exception):
    pass


async def run_nft(netns_fd: int, script: str) -> None:
    """Apply an nft script in the namespace open at `netns_fd`, as one transaction (in-process,
    from a thread that joins the namespace: no fork of the daemon)."""
    try:
        await run_in_netns(netns_fd, functools.partial(run_script, script))
    except NftError as e:
        raise NatError(f"nft in the container namespace: {e}") from None
