"""The daemon's namespace's netfilter state for the overlay: its own tables (the gateway subnet's
masquerade; the VXLAN datagrams kept out of conntrack), and the host's firewall and the gateway
bridge. A host whose forward chain drops by policy (ufw, Docker's iptables rules, an nftables
firewall) would drop what tasks send out through the gateway bridge, and every published port
(the routing mesh and host-mode ports are DNATed towards that bridge). Docker inserts its own
accept rules for its bridges; so does this module, first in every such chain, each rule marked
with a comment so that a restarted daemon replaces its own rules rather than adding more, and a
leaving node takes them out.

The rule texts and the readers of `nft -j` are pure; `install_host_tables`,
`remove_host_tables`, `let_through` and `stop_letting_through` run nft in the calling thread's
namespace (the overlay host's thread: the daemon's). A firewall loaded after the daemon started
is not seen until it restarts (as with Docker).
"""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Network
from typing import Any

from overlay import plan
from overlay.links import OverlayError


def forward_accept_rules(family: str, table: str, chain: str, bridge: str, comment: str,
                         stale: list[int]) -> str:
    """Rules, first in a host firewall's forward chain whose policy drops (iptables' FORWARD
    under ufw or Docker, or an nftables one), that let the gateway bridge's traffic through, as
    Docker does for its own bridges: what tasks send out, what answers it, and what was DNATed
    towards the bridge (published ports, the routing mesh). `stale` are the handles of the rules
    an earlier life inserted (found by `comment`), replaced in the same transaction."""
    where = f"{family} {table} {chain}"
    lines = [f"delete rule {where} handle {handle}" for handle in stale]
    lines += [f'insert rule {where} oifname "{bridge}" ct status dnat accept comment "{comment}"',
              f'insert rule {where} oifname "{bridge}" ct state established,related accept comment "{comment}"',
              f'insert rule {where} iifname "{bridge}" accept comment "{comment}"']
    return "".join(line + "\n" for line in lines)


def forward_chains(listing: dict[str, Any], own_prefix: str) -> list[tuple[str, str, str]]:
    """(family, table, chain) of every base chain on the forward hook whose policy drops, from
    `nft -j list chains` (tables of this daemon's own prefix excepted)."""
    out = []
    for item in listing.get("nftables") or ():
        chain = item.get("chain") if isinstance(item, dict) else None
        if (isinstance(chain, dict) and chain.get("hook") == "forward" and chain.get("policy") == "drop"
                and chain.get("family") in ("ip", "inet") and not str(chain.get("table", "")).startswith(own_prefix)):
            out.append((str(chain["family"]), str(chain["table"]), str(chain["name"])))
    return out


def commented_handles(listing: dict[str, Any], comment: str) -> list[int]:
    """The handles of the rules carrying `comment`, from `nft -j list chain ...`."""
    return [int(rule["handle"]) for item in listing.get("nftables") or ()
            if isinstance(item, dict) and isinstance(rule := item.get("rule"), dict) and rule.get("comment") == comment]


def let_through(bridge: str, table: str, own_prefix: str) -> None:
    comment = f"{table}:{bridge}"
    for family, name, chain in forward_chains(_nft_json("list", "chains"), own_prefix):
        stale = commented_handles(_nft_json("list", "chain", family, name, chain), comment)
        _nft(forward_accept_rules(family, name, chain, bridge, comment, stale))


def install_host_tables(prefix: str, table: str, subnet: IPv4Network, bridge: str, vxlan_port: int) -> None:
    """The gateway table (`table`: the subnet masqueraded), the VXLAN table (the datagrams to
    `vxlan_port` untracked), in one transaction; then the host firewall's forward chains let the
    bridge's traffic through. Run in the daemon's namespace (the calling thread's)."""
    _nft(plan.masquerade_ruleset(table, subnet, bridge)
         + plan.vxlan_untracked_ruleset(plan.vxlan_table_name(prefix), vxlan_port))
    let_through(bridge, table, prefix)


def remove_host_tables(prefix: str, table: str, bridge: str) -> None:
    _nft(plan.delete_table_ruleset(table) + plan.delete_table_ruleset(plan.vxlan_table_name(prefix)))
    stop_letting_through(bridge, table, prefix)


def stop_letting_through(bridge: str, table: str, own_prefix: str) -> None:
    comment = f"{table}:{bridge}"
    for family, name, chain in forward_chains(_nft_json("list", "chains"), own_prefix):
        stale = commented_handles(_nft_json("list", "chain", family, name, chain), comment)
        if stale:
            _nft("".join(f"delete rule {family} {name} {chain} handle {h}\n" for h in stale))


def _nft(script: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OverlayError(f"nft: {proc.stderr.strip() or proc.stdout.strip()}")


def _nft_json(*args: str) -> dict[str, Any]:
    proc = subprocess.run(["nft", "-j", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OverlayError(f"nft {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    try:
        data = json.loads(proc.stdout or "{}")
    except ValueError as exc:
        raise OverlayError(f"nft {' '.join(args)}: unreadable output: {exc}") from None
    return data if isinstance(data, dict) else {}
