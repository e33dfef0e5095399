"""Published ports: the rules shared by the API's checks and the allocator. Pure functions over
model objects.

- Only ingress-mode ports are allocated cluster-wide: one (protocol, port) belongs to one
  service. An ingress port asked as 0 gets the lowest port of 30000-32767 (one space per
  protocol) that no other service speaks for (ingress or host mode, asked for or allocated) and
  keeps it across updates and leader changes: `Endpoint.Ports` in the store is the only record,
  matched by (Name, Protocol, TargetPort). The spec keeps 0.
- Host-mode ports are not allocated: two services may publish one host port, and the scheduler
  keeps two tasks of it off one node (manager/scheduler/filters.py HostPortFilter).
- Conflicts name the service that holds the port and the mode it holds it in (swarmkit
  controlapi `checkPortConflicts`): a new ingress port clashes with another service's ingress or
  host port, a new host port with another service's ingress port.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from model import Service

DYNAMIC_FIRST, DYNAMIC_LAST = 30000, 32767
INGRESS, HOST = "ingress", "host"

PortKey = tuple[str, int]  # (protocol, published port)


def port_config(port: dict[str, Any], published: int | None = None) -> dict[str, Any]:
    """A PortConfig as the server shows it: Protocol and PublishMode lower-case and always there
    (the proto enums' zero values are tcp and ingress), PublishedPort omitted when 0."""
    out: dict[str, Any] = {}
    if port.get("Name"):
        out["Name"] = str(port["Name"])
    out["Protocol"] = str(port.get("Protocol") or "tcp").lower()
    out["TargetPort"] = int(port.get("TargetPort") or 0)
    number = int(port.get("PublishedPort") or 0) if published is None else published
    if number:
        out["PublishedPort"] = number
    out["PublishMode"] = str(port.get("PublishMode") or INGRESS).lower()
    return out


def spec_ports(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The EndpointSpec's ports of a service spec, each as `port_config` shows it."""
    return [port_config(p) for p in (spec.get("EndpointSpec") or {}).get("Ports") or [] if isinstance(p, dict)]


def key_of(port: dict[str, Any]) -> PortKey:
    return (str(port.get("Protocol") or "tcp").lower(), int(port.get("PublishedPort") or 0))


def is_ingress_port(port: dict[str, Any]) -> bool:
    return str(port.get("PublishMode") or INGRESS).lower() == INGRESS


def ingress_ports(service: Service) -> list[dict[str, Any]]:
    """The service's allocated ingress-mode ports (`Endpoint.Ports`), published port set."""
    return [port_config(p) for p in (service.endpoint or {}).get("Ports") or []
            if isinstance(p, dict) and is_ingress_port(p) and p.get("PublishedPort")]


def host_ports(ports: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [port_config(p) for p in ports if not is_ingress_port(p)]


class PortClaims:
    """What other services speak for: (protocol, port) -> the service, per mode. A service's
    claims are its spec's ports with a published port and its allocated `Endpoint.Ports`."""

    def __init__(self, services: Iterable[Service], but: str = "") -> None:
        self.ingress: dict[PortKey, Service] = {}
        self.host: dict[PortKey, Service] = {}
        for service in services:
            if service.id == but:
                continue
            for port in [*spec_ports(service.spec), *((service.endpoint or {}).get("Ports") or [])]:
                key = key_of(port)
                if key[1]:
                    (self.ingress if is_ingress_port(port) else self.host).setdefault(key, service)

    def conflict(self, port: dict[str, Any]) -> str | None:
        """Why `port` (of another service) cannot be published, in Docker's words; None if it can."""
        key = key_of(port)
        if not key[1]:
            return None
        holder = self.ingress.get(key)
        if holder is not None:
            return f"port '{key[1]}' is already in use by service '{holder.name}' ({holder.id}) as an ingress port"
        if is_ingress_port(port):
            holder = self.host.get(key)
            if holder is not None:
                return (f"port '{key[1]}' is already in use by service '{holder.name}' ({holder.id}) "
                        "as a host-published port")
        return None

    def taken(self, key: PortKey) -> bool:
        return key in self.ingress or key in self.host


def port_conflict(spec: dict[str, Any], services: Iterable[Service], service_id: str = "") -> str | None:
    """The first port of `spec` another service holds (the API's check at create and update)."""
    ports = [p for p in spec_ports(spec) if p.get("PublishedPort")]
    if not ports:
        return None
    claims = PortClaims(services, but=service_id)
    for port in ports:
        reason = claims.conflict(port)
        if reason is not None:
            return reason
    return None


def allocate_ports(service: Service, claims_of_others: Any) -> list[dict[str, Any]] | str:
    """`Endpoint.Ports` for the service's current spec, or why they cannot be had.

    `claims_of_others` is called (at most once, and only when a port is new to the service) for
    the PortClaims of every other service: a service whose ports are all allocated already costs
    no scan of the others."""
    wanted = spec_ports(service.spec)
    if not wanted:
        return []
    held = [p for p in ingress_ports(service)]
    own = {key_of(p) for p in wanted if p.get("PublishedPort")}
    claims: PortClaims | None = None

    def others() -> PortClaims:
        nonlocal claims
        if claims is None:
            claims = claims_of_others()
        return claims

    out: list[dict[str, Any] | None] = []
    picked: set[PortKey] = set()
    for port in wanted:               # first what is decided already: explicit and held ports
        if not is_ingress_port(port):
            out.append(port)
            continue
        if port.get("PublishedPort"):
            key = key_of(port)
            if key in picked:
                return f"duplicate published port {key[1]}/{key[0]}"
            if not any(key_of(h) == key for h in held):
                reason = others().conflict(port)
                if reason is not None:
                    return reason
            picked.add(key)
            out.append(port)
            continue
        sticky = next((h for h in held if (h.get("Name"), h["Protocol"], h["TargetPort"]) ==
                       (port.get("Name"), port["Protocol"], port["TargetPort"])
                       and key_of(h) not in picked and key_of(h) not in own), None)
        if sticky is None:
            out.append(None)
            continue
        held.remove(sticky)
        picked.add(key_of(sticky))
        out.append(port_config(port, key_of(sticky)[1]))
    for i, port in enumerate(wanted):  # then new ports for those asked as 0
        if out[i] is not None:
            continue
        protocol = port["Protocol"]
        number = next((n for n in range(DYNAMIC_FIRST, DYNAMIC_LAST + 1)
                       if (protocol, n) not in picked and (protocol, n) not in own
                       and not others().taken((protocol, n))), None)
        if number is None:
            return f"no published port left in {DYNAMIC_FIRST}-{DYNAMIC_LAST}/{protocol}"
        picked.add((protocol, number))
        out[i] = port_config(port, number)
    return [p for p in out if p is not None]
