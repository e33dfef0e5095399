"""What a node's embedded DNS knows, per network: services, their tasks, and the names of both.

Theory of operation. The feeder (the daemon, from cluster state) builds `NetworkEntry` values
holding only what should be answered *now*: services on that network and the tasks that are in
rotation (a stopping task is simply left out). `ServiceRecords` is an immutable snapshot indexed
per network; replacing one network (`with_network`) re-indexes only that network, and a server
swaps the whole snapshot in one assignment, so a query sees either the old table or the new one.

Names per network (all lower-cased; lookups are case-insensitive), in two tiers:
  - service tier: `<service>` and each service alias → the VIP in vip mode when one is known,
    else every task address; `tasks.<service>` and `tasks.<alias>` → every task address;
  - task tier: the task name `web.1.<taskid>`, the 12-hex short container id, the hostname and
    the task's network aliases → that task's address (tasks sharing an alias all answer).
The service tier wins over the task tier when a name is in both (a hostname equal to a service
name does not mix a VIP with a task address). Within a tier, addresses of equal names are merged.
A known name may have no address (a service with no running task): it answers empty, it is
still ours and is never forwarded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
EndpointMode = Literal["vip", "dnsrr"]

SHORT_ID_LENGTH = 12


def parse_address(value: str | IPAddress) -> IPAddress:
    """An address from `10.0.1.5`, `10.0.1.5/24` (the allocator's CIDR form) or an address object."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    return ipaddress.ip_interface(value).ip


@dataclass(frozen=True)
class TaskEntry:
    """One task's endpoint on one network."""

    name: str                      # the task/container name, web.1.<taskid>
    task_id: str
    container_id: str              # full or short; its first 12 characters are the short id
    address: IPAddress             # parse_address() takes the allocator's CIDR strings
    hostname: str = ""             # empty: no hostname record (Docker's default is the short id)
    aliases: tuple[str, ...] = ()  # the task's own network aliases

    def __post_init__(self) -> None:
        object.__setattr__(self, "aliases", tuple(self.aliases))

    @property
    def short_id(self) -> str:
        return self.container_id[:SHORT_ID_LENGTH]


@dataclass(frozen=True)
class ServiceEntry:
    """One service on one network, with its tasks in rotation on that network."""

    name: str
    service_id: str
    endpoint_mode: EndpointMode = "vip"
    vip: IPAddress | None = None
    aliases: tuple[str, ...] = ()
    tasks: tuple[TaskEntry, ...] = ()

    def __post_init__(self) -> None:
        if self.endpoint_mode not in ("vip", "dnsrr"):
            raise ValueError(f"endpoint mode {self.endpoint_mode!r}: want vip or dnsrr")
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "tasks", tuple(self.tasks))

    def addresses(self) -> tuple[IPAddress, ...]:
        """What `<service>` answers: the VIP in vip mode once allocated, else the task addresses."""
        if self.endpoint_mode == "vip" and self.vip is not None:
            return (self.vip,)
        return tuple(t.address for t in self.tasks)


@dataclass(frozen=True)
class NetworkEntry:
    network_id: str
    name: str
    services: tuple[ServiceEntry, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", tuple(self.services))


def _merge(index: dict[str, list[IPAddress]], name: str, addresses: Iterable[IPAddress]) -> None:
    known = index.setdefault(name.lower(), [])
    known.extend(a for a in addresses if a not in known)


@dataclass(frozen=True)
class _NetworkIndex:
    entry: NetworkEntry
    name: str                                   # lower-cased network name
    services: Mapping[str, tuple[IPAddress, ...]]
    tasks: Mapping[str, tuple[IPAddress, ...]]
    reverse: Mapping[IPAddress, str]            # task address → PTR target

    @classmethod
    def build(cls, entry: NetworkEntry) -> _NetworkIndex:
        services: dict[str, list[IPAddress]] = {}
        tasks: dict[str, list[IPAddress]] = {}
        reverse: dict[IPAddress, str] = {}
        for svc in entry.services:
            every_task = [t.address for t in svc.tasks]
            for name in (svc.name, *svc.aliases):
                if not name:
                    continue
                _merge(services, name, svc.addresses())
                _merge(services, f"tasks.{name}", every_task)
            for task in svc.tasks:
                for name in (task.name, task.short_id, task.hostname, *task.aliases):
                    if name:
                        _merge(tasks, name, [task.address])
                reverse.setdefault(task.address, f"{task.name}.{entry.name}.")
        return cls(entry, entry.name.lower(),
                   {k: tuple(v) for k, v in services.items()},
                   {k: tuple(v) for k, v in tasks.items()},
                   reverse)

    def lookup(self, name: str) -> tuple[IPAddress, ...] | None:
        found = self.services.get(name)
        return found if found is not None else self.tasks.get(name)


@dataclass(frozen=True)
class ServiceRecords:
    """An immutable snapshot of every network a node answers for, keyed by network id."""

    _networks: Mapping[str, _NetworkIndex] = field(default_factory=dict)

    @classmethod
    def of(cls, networks: Iterable[NetworkEntry]) -> ServiceRecords:
        return cls({n.network_id: _NetworkIndex.build(n) for n in networks})

    def with_network(self, entry: NetworkEntry) -> ServiceRecords:
        """This table with one network added or replaced (only that network is re-indexed)."""
        return ServiceRecords({**self._networks, entry.network_id: _NetworkIndex.build(entry)})

    def without_network(self, network_id: str) -> ServiceRecords:
        return ServiceRecords({k: v for k, v in self._networks.items() if k != network_id})

    def network(self, network_id: str) -> NetworkEntry | None:
        index = self._networks.get(network_id)
        return index.entry if index else None

    @property
    def network_ids(self) -> tuple[str, ...]:
        return tuple(self._networks)

    def _shared(self, client_networks: Sequence[str]) -> list[_NetworkIndex]:
        return [self._networks[n] for n in client_networks if n in self._networks]

    def lookup(self, name: str, client_networks: Sequence[str]) -> tuple[IPAddress, ...] | None:
        """The addresses of `name` (no trailing dot) as seen from a client on `client_networks`
        (network ids, in resolution order), or None when no shared network knows it.

        Like Docker, the whole name is tried on every network first; then each dotted suffix is
        taken as a network name: `web.front` is `web` on the network named `front`, and
        `web.1.x.front` is `web.1.x` there. The first network (in the client's order) that
        knows the name answers."""
        name = name.lower().rstrip(".")
        if not name:
            return None
        shared = self._shared(client_networks)
        for net in shared:
            found = net.lookup(name)
            if found is not None:
                return found
        cut = len(name)
        while (cut := name.rfind(".", 0, cut)) > 0:
            prefix, suffix = name[:cut], name[cut + 1:]
            for net in shared:
                if net.name == suffix:
                    found = net.lookup(prefix)
                    if found is not None:
                        return found
        return None

    def reverse(self, address: IPAddress, client_networks: Sequence[str]) -> str | None:
        """The PTR target of a task address (`web.1.<taskid>.<network>.`); VIPs have none."""
        for net in self._shared(client_networks):
            target = net.reverse.get(address)
            if target is not None:
                return target
        return None
