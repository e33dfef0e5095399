"""Host-mode published ports (`--publish mode=host`): a task's port on its own node only, as
Docker's port bindings do it, in the daemon's namespace. Pure: values and the nft script.

Table `<prefix>-hostports`, rewritten whole in one transaction on every change (a node has a
handful of host ports; open connections keep their conntrack NAT through a rewrite):
    map ports  inet_proto . inet_service : ipv4_addr . inet_service    published → task . target
    chain pre  nat prerouting, chain out nat output (localhost:P):
               fib daddr type local meta l4proto . th dport @keys dnat ip to meta l4proto . th dport map @ports
    chain post masquerade what the node itself sends to a task that way (127.0.0.1 cannot
               be answered from the task)
The task is reached at its address on the gateway bridge (`device`), which routes back here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from ingress.dataplane.plan import DEFAULT_PREFIX
from ingress.dataplane.spec import check_device, check_port, check_protocol


@dataclass(frozen=True, order=True)
class HostPort:
    protocol: str
    port: int                # published on this node
    address: IPv4Address     # the task's address on the gateway bridge
    target: int

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        check_port(self.port, "published port")
        check_port(self.target, "target port")

    @property
    def key(self) -> tuple[str, int]:
        return self.protocol, self.port


def table_name(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}-hostports"


def host_ports_script(ports: Iterable[HostPort], device: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The whole table, replacing whatever was there (an empty `ports` removes it)."""
    t = f"ip {table_name(prefix)}"
    wanted = sorted(set(ports))
    keys = [p.key for p in wanted]
    if len(set(keys)) != len(keys):
        raise ValueError(f"host ports: a published port appears twice in {keys}")
    lines = [f"table {t} {{}}", f"delete table {t}"]
    if wanted:
        check_device(device)
        elements = ", ".join(f"{p.protocol} . {p.port} : {p.address} . {p.target}" for p in wanted)
        dnat = "fib daddr type local meta l4proto . th dport @keys dnat ip to meta l4proto . th dport map @ports"
        lines += [
            f"table {t} {{ set keys {{ type inet_proto . inet_service; elements = {{ "
            f"{', '.join(f'{p} . {n}' for p, n in keys)} }}; }}; "
            f"map ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; elements = {{ {elements} }}; }}; "
            "chain pre { type nat hook prerouting priority dstnat; policy accept; }; "
            "chain out { type nat hook output priority -100; policy accept; }; "
            "chain post { type nat hook postrouting priority srcnat; policy accept; }; }",
            f"add rule {t} pre {dnat}",
            f"add rule {t} out {dnat}",
            f'add rule {t} post ct status dnat oifname "{device}" fib saddr type local masquerade',
        ]
    return "".join(line + "\n" for line in lines)
