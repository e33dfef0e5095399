"""The nftables rules that put the embedded DNS at 127.0.0.11:53 inside a container's namespace.

The server listens on 127.0.0.11 at two random ports (UDP and TCP) so that it never collides
with anything the container binds. In the container's namespace, table `ip shoal-dns` holds one
chain (hook output, priority raw) that rewrites ports without state: a packet to 127.0.0.11:53
gets the server's port as its destination, and one leaving the server's port gets source port
53 back. Traffic on loopback passes the output hook only (once, on its way out), so both
directions of every query and TCP connection are rewritten, and the client sees :53 throughout.
Stateless on purpose: a NAT chain would switch conntrack on for the whole namespace, so that
every packet of the container (its bulk traffic over the overlay included) paid a connection
lookup for the sake of a few DNS queries.

A new namespace gets the table with `create` (fails if it exists, as in a namespace whose rules an
earlier daemon made); otherwise the table is replaced in one nft transaction (add, delete,
define), so a restarted daemon with new ports never leaves a half-old rule set. Deleting a table
(or flushing one) makes the transaction wait for the kernel's grace period: 8-15 ms on this kind
of machine against under a millisecond for a creation, so a sandbox's start never deletes, and a
sandbox whose namespace is about to go never removes its rules. The script runs through
libnftables in a thread that joins the namespace on an fd the daemon holds, so the rules land in
the namespace the sockets were made in even if its path has been reused since.
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
        "  chain dns-ports {\n"
        "    type filter hook output priority raw; policy accept;\n"
        f"    ip daddr {address} udp dport 53 udp dport set {udp_port}\n"
        f"    ip daddr {address} tcp dport 53 tcp dport set {tcp_port}\n"
        f"    ip saddr {address} udp sport {udp_port} udp sport set 53\n"
        f"    ip saddr {address} tcp sport {tcp_port} tcp sport set 53\n"
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
