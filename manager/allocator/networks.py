"""Allocating one network (subnets, gateways, VXLAN ids) and what a task attaches to: pure
functions over model objects, shared by the allocator loop and the network API's checks.

A network's subnets and ids must not clash with any other network's, allocated or only asked
for (a pinned subnet or VXLAN id of a network not allocated yet is already spoken for).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from manager.allocator.ipam import (
    DEFAULT_IPAM_DRIVER,
    VNI_FIRST,
    VXLAN_ID_LIST,
    IpamError,
    IPNetwork,
    SubnetConfig,
    check_ipam_driver,
    next_pool_subnet,
    next_vni,
    overlapping,
    parse_requested,
    parse_vni_list,
)
from model import Network, Service, Task

NO_POOL = ("could not find an available, non-overlapping IPv4 address pool among the defaults to assign "
           "to the network")
POOL_OVERLAP = "Pool overlaps with other one on this address space"
PREDEFINED_LABEL = "com.docker.swarm.predefined"
INTERNAL_LABEL = "com.docker.swarm.internal"


@dataclass(frozen=True)
class NetworkAllocation:
    ipam: dict[str, Any]
    driver_state: dict[str, Any]


def allocated_configs(network: Network) -> list[SubnetConfig]:
    """The subnets the allocator gave `network` (empty until it is allocated)."""
    out = []
    for rec in (network.ipam or {}).get("Configs") or []:
        try:
            out.append(SubnetConfig.from_record(rec))
        except (KeyError, ValueError):
            continue
    return out


def claimed_subnets(network: Network) -> list[IPNetwork]:
    """Subnets `network` holds: allocated ones, else the ones its spec pins."""
    if network.ipam:
        return [c.subnet for c in allocated_configs(network)]
    try:
        return [c.subnet for c in parse_requested(network.spec.get("IPAM"))]
    except IpamError:
        return []


def network_vnis(network: Network) -> list[int]:
    """VXLAN ids `network` holds: allocated ones, else the ones its options pin."""
    text = (network.driver_state.get("Options") or {}).get(VXLAN_ID_LIST)
    try:
        if text is not None:
            return parse_vni_list({VXLAN_ID_LIST: text})
        return parse_vni_list(network.spec.get("Options"))
    except IpamError:
        return []


def _auto_vnis(network: Network) -> list[int]:
    """The ids the allocator chose itself (not pinned by the user) for `network`."""
    if VXLAN_ID_LIST in (network.spec.get("Options") or {}) or not network.driver_state:
        return []
    return [v for v in network_vnis(network) if v >= VNI_FIRST]


def plan_network(network: Network, others: Iterable[Network], pools: list[str], subnet_size: int) -> NetworkAllocation:
    """What `network` gets: the user's subnets (gateway default: the first address) or the next
    free `/subnet_size` of `pools`, and one VXLAN id per IPv4 subnet (pinned, or serial after the
    highest id chosen automatically so far). Raises IpamError with Docker's texts."""
    others = [o for o in others if o.id != network.id]
    spec = network.spec
    check_ipam_driver(spec.get("IPAM"))
    requested = parse_requested(spec.get("IPAM"))
    taken = [(subnet, other) for other in others for subnet in claimed_subnets(other)]
    for config in requested:
        clash = overlapping(config.subnet, [s for s, _ in taken])
        if clash is not None:
            owner = next(o for s, o in taken if s is clash)
            raise IpamError(f"{POOL_OVERLAP}: {config.subnet} overlaps {clash} of network {owner.name}")
    configs = [c if c.gateway is not None else
               SubnetConfig(c.subnet, c.subnet.network_address + (1 if c.subnet.num_addresses > 2 else 0),
                            c.ip_range, c.aux)
               for c in requested]
    if not any(c.subnet.version == 4 for c in configs):
        subnet = next_pool_subnet(pools, subnet_size, [s for s, _ in taken] + [c.subnet for c in configs])
        if subnet is None:
            raise IpamError(f"{NO_POOL} (pools {', '.join(pools)}, subnet size {subnet_size})")
        configs.insert(0, SubnetConfig(subnet, subnet.network_address + 1))
    pinned = parse_vni_list(spec.get("Options"))
    in_use = {vni for other in others for vni in network_vnis(other)}
    last_auto = max((v for other in others for v in _auto_vnis(other)), default=VNI_FIRST - 1)
    vnis: list[int] = []
    for i, config in enumerate(c for c in configs if c.subnet.version == 4):
        if i < len(pinned):
            vni = pinned[i]
            if vni in in_use:
                raise IpamError(f"could not assign vxlan id {vni} to pool {config.subnet}: "
                                "requested bit is already allocated")
        else:
            found = next_vni(in_use, last_auto)
            if found is None:
                raise IpamError(f"could not obtain vxlan id for pool {config.subnet}: no bit available")
            vni = last_auto = found
        in_use.add(vni)
        vnis.append(vni)
    options = {k: v for k, v in (spec.get("Options") or {}).items() if k != VXLAN_ID_LIST}
    options[VXLAN_ID_LIST] = ",".join(str(v) for v in vnis)
    driver: dict[str, Any] = {"Name": (spec.get("IPAM") or {}).get("Driver") or DEFAULT_IPAM_DRIVER}
    if (spec.get("IPAM") or {}).get("Options"):
        driver["Options"] = dict(spec["IPAM"]["Options"])
    return NetworkAllocation(ipam={"Driver": driver, "Configs": [c.to_record() for c in configs]},
                             driver_state={"Name": spec.get("Driver") or "overlay", "Options": options})


def is_ingress(network: Network) -> bool:
    """Docker's test: the Ingress flag, or the legacy name `ingress` with the internal label."""
    return network.is_ingress or (network.name == "ingress" and INTERNAL_LABEL in (network.spec.get("Labels") or {}))


def find_ingress(networks: Iterable[Network]) -> Network | None:
    found = sorted((n for n in networks if is_ingress(n)), key=lambda n: (n.created_at, n.id))
    return found[0] if found else None


def needs_ingress(service: Service | None) -> bool:
    """The service publishes a port in ingress mode (the default mode)."""
    if service is None:
        return False
    ports = (service.spec.get("EndpointSpec") or {}).get("Ports") or []
    return any((p.get("PublishMode") or "ingress") == "ingress" for p in ports)


def needs_addresses(service: Service) -> bool:
    """Do the service's tasks need the allocator (an address on some network) before they can
    be scheduled? Tasks that do not are created PENDING: one write fewer per task."""
    template = service.spec.get("TaskTemplate") or {}
    return bool(template.get("Networks") or service.spec.get("Networks")) or needs_ingress(service)


def service_network_refs(service: Service) -> list[str]:
    """The service's network references in spec order: TaskTemplate.Networks, else the
    deprecated Spec.Networks. Duplicates are dropped."""
    spec = service.spec
    refs = (spec.get("TaskTemplate") or {}).get("Networks") or spec.get("Networks") or []
    out: list[str] = []
    for ref in refs:
        target = str((ref or {}).get("Target") or "") if isinstance(ref, dict) else ""
        if target and target not in out:
            out.append(target)
    return out


def endpoint_mode(service: Service) -> str:
    """"vip" (the default) or "dnsrr"."""
    mode = str((service.spec.get("EndpointSpec") or {}).get("Mode") or "vip").lower()
    return "dnsrr" if mode == "dnsrr" else "vip"


def gets_vip(network: Network) -> bool:
    """Node-local networks (the predefined `host` and `bridge`, any driver but overlay) get no VIP."""
    if (network.spec.get("Labels") or {}).get(PREDEFINED_LABEL) == "true":
        return False
    return str(network.driver_state.get("Name") or network.spec.get("Driver") or "overlay") == "overlay"


def task_network_refs(task: Task, service: Service | None) -> list[str]:
    """The network references of a task, in spec order: TaskTemplate.Networks, else the service's
    deprecated Spec.Networks. Duplicates are dropped."""
    refs = task.spec.get("Networks") or (service.spec.get("Networks") if service is not None else None) or []
    out: list[str] = []
    for ref in refs:
        target = str((ref or {}).get("Target") or "")
        if target and target not in out:
            out.append(target)
    return out
