"""Network plumbing of the lab, through iproute2 and nftables.

Layout: a hub namespace `<lab>-hub` holds the bridge `br0`; every host is a namespace
`<lab>-<node>` whose `eth0` is a veth whose peer `p<N>` sits on that bridge. Nothing is created
in the root namespace, so the machine's own routes never change. A partition is an nftables
`bridge` table in the hub that drops frames between two hosts' ports; healing flushes it.
"""

from __future__ import annotations

import subprocess

HUB_BRIDGE = "br0"
PARTITION_TABLE = "lab_partition"


class NetError(Exception):
    pass


def sh(*args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, input=input_text)
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def enter(ns: str) -> list[str]:
    """The argv prefix that runs a command in namespace `ns`'s network only. Unlike
    `ip netns exec`, nsenter keeps the mount namespace, so the host's cgroup mounts (which runc
    needs) stay visible."""
    return ["nsenter", f"--net=/run/netns/{ns}", "--"]


def list_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(x) for x in out.split() if x.isdigit()]


def create_hub(hub_ns: str) -> None:
    sh("ip", "netns", "add", hub_ns)
    sh("ip", "-n", hub_ns, "link", "set", "lo", "up")
    sh("ip", "-n", hub_ns, "link", "add", HUB_BRIDGE, "type", "bridge")
    sh("ip", "-n", hub_ns, "link", "set", HUB_BRIDGE, "up")


def create_host(hub_ns: str, host_ns: str, port: str, address: str, prefix: int) -> None:
    """A host namespace with eth0 at `address/prefix`, wired to the hub bridge on `port`."""
    sh("ip", "netns", "add", host_ns)
    sh("ip", "-n", host_ns, "link", "set", "lo", "up")
    sh("ip", "-n", hub_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
       "netns", host_ns)
    sh("ip", "-n", hub_ns, "link", "set", port, "master", HUB_BRIDGE)
    sh("ip", "-n", hub_ns, "link", "set", port, "up")
    sh("ip", "-n", host_ns, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
    sh("ip", "-n", host_ns, "link", "set", "eth0", "up")


def delete_namespace(ns: str) -> None:
    sh("ip", "netns", "delete", ns, check=False)


def partition(hub_ns: str, port_a: str, port_b: str) -> None:
    """Drop every frame between two hub ports, both ways."""
    script = (
        f"add table bridge {PARTITION_TABLE}\n"
        f"add chain bridge {PARTITION_TABLE} forward "
        "{ type filter hook forward priority 0; policy accept; }\n"
        f'add rule bridge {PARTITION_TABLE} forward iifname "{port_a}" oifname "{port_b}" drop\n'
        f'add rule bridge {PARTITION_TABLE} forward iifname "{port_b}" oifname "{port_a}" drop\n'
    )
    sh("ip", "netns", "exec", hub_ns, "nft", "-f", "-", input_text=script)


def heal(hub_ns: str) -> None:
    sh("ip", "netns", "exec", hub_ns, "nft", "delete", "table", "bridge", PARTITION_TABLE, check=False)
