"""The nftables rules that put the embedded DNS at 127.0.0.11:53 inside a container's namespace.

The server listens on 127.0.0.11 at two random ports (UDP and TCP) so that it never collides
with anything the container binds. In the container's namespace, table `ip shoal-dns` holds:
  - chain dns-dnat (hook output, priority dstnat = -100): queries to 127.0.0.11:53 are DNATed
    to the random ports;
  - chain dns-snat (hook postrouting, priority srcnat): anything leaving the random ports gets
    source port 53 back (conntrack already undoes the DNAT on replies; this covers the rest,
    as Docker does).
The table is replaced in one `nft -f -` transaction (add, delete, define), so a restarted daemon
with new ports never leaves a half-old rule set. nft runs under `nsenter --net=` on an fd the
daemon holds, so the rules land in the namespace the sockets were made in even if its path
has been reused since.
"""

from __future__ import annotations

import asyncio
import shutil

TABLE = "shoal-dns"
NFT_TIMEOUT = 10.0


def nat_script(address: str, udp_port: int, tcp_port: int) -> str:
    return (
        f"table ip {TABLE} {{}}\n"
        f"delete table ip {TABLE}\n"
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


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


async def run_nft(netns_fd: int, script: str) -> None:
    """Apply an nft script in the namespace open at `netns_fd`, as one transaction."""
    proc = await asyncio.create_subprocess_exec(
        _tool("nsenter"), f"--net=/proc/self/fd/{netns_fd}", "--", _tool("nft"), "-f", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        pass_fds=(netns_fd,))
    try:
        async with asyncio.timeout(NFT_TIMEOUT):
            out, err = await proc.communicate(script.encode())
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        raise NatError(f"nft in the container namespace: {(err or out).decode(errors='replace').strip()}")
