"""A service's `Endpoint` as the allocator leaves it, and waiting for it: what the service API
waits for before it answers a create or an update.

The API writes a service; the allocator (leader only, allocator.py) then writes the service's
`Endpoint` (published ports asked as 0, one VIP per network in vip mode) in a second
transaction, which bumps the service's version. A client that reads the service between the two
writes and sends an update with that version is refused "update out of sequence". So the API
answers once the endpoint is settled (`wait_for_endpoint`):

- settled: `Endpoint` is what the allocator's next round would leave unchanged
  (`settled_endpoint`): every port it publishes has its number, and the service holds a VIP on
  exactly the networks it wants (`vip_networks`), ingress first. A service with no network and
  no published port is settled from the start;
- or the allocator cannot settle it for now: the checks it makes itself (a published port
  another service holds, no port left, a network not found), or the reason it wrote into the
  Status.Err of the service's NEW tasks (an address pool exhausted, a network not allocated);
- or the bound passes (the allocator is slow, or a leader change is under way): the API answers
  anyway, as it did before it waited.

Everything is read from the store, so a follower manager (whose writes the leader applies, and
whose store then receives the allocator's write through Raft) waits like the leader. The wait
is on the store's watch, never a poll, and never changes the answer, only when it is sent. It
is skipped when nobody allocates into the store, which only whoever put the API and the store
together knows: the API asks its cluster access (`allocator_writes`, manager/api/cluster.py).
The daemon's answers yes on every manager (each Raft leader runs an allocator, and its writes
reach every manager's store); a test's store without Raft gets writes only from an allocator
the test runs on it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any

from manager.allocator.networks import (
    endpoint_mode,
    find_ingress,
    gets_vip,
    is_ingress,
    needs_ingress,
    service_network_refs,
)
from manager.allocator.ports import PortClaims, allocate_ports
from manager.store import Event, ReadTx, Store, WatchDropped
from model import Network, Service, Task, TaskState

log = logging.getLogger(__name__)

ENDPOINT_WAIT = 2.5  # seconds the API waits at most for the allocator's write

def find_network(tx: ReadTx, ref: str) -> Network | None:
    """A network reference of a service or task: an ID, else a name only one network has."""
    network: Network | None = tx.get("networks", ref)
    if network is None:
        named = tx.find("networks", name=ref)
        network = named[0] if len(named) == 1 else None
    return network


def vip_networks(service: Service, tx: ReadTx, ingress: Callable[[], Network | None]) -> list[Network] | str:
    """The networks the service gets a VIP on, in order: ingress when it publishes an
    ingress-mode port (and there is one), then each network of its spec that VIPs exist on;
    none in dnsrr mode. Or why they cannot be had (a network not found)."""
    if endpoint_mode(service) == "dnsrr":
        return []
    networks: list[Network] = []
    if needs_ingress(service):
        found = ingress()
        if found is not None:
            networks.append(found)
    for ref in service_network_refs(service):
        network = find_network(tx, ref)
        if network is None:
            return f"network {ref} not found"
        if gets_vip(network) and not is_ingress(network) and all(n.id != network.id for n in networks):
            networks.append(network)
    return networks


def held_vips(service: Service) -> dict[str, str]:
    """Network ID -> the VIP the service holds on it."""
    return {str(v.get("NetworkID")): str(v.get("Addr")) for v in (service.endpoint or {}).get("VirtualIPs") or []
            if isinstance(v, dict) and v.get("NetworkID") and v.get("Addr")}


def endpoint_record(service: Service, ports: list[dict[str, Any]], vips: list[dict[str, str]]) -> dict[str, Any]:
    """`Endpoint` as the allocator writes it: a copy of the spec's EndpointSpec, then the ports
    and the VIPs, each only when there are any."""
    spec = service.spec.get("EndpointSpec")
    endpoint: dict[str, Any] = {"Spec": copy.deepcopy(spec) if spec is not None else {}}
    if ports:
        endpoint["Ports"] = ports
    if vips:
        endpoint["VirtualIPs"] = vips
    return endpoint


def reason_recorded(tx: ReadTx, service: Service) -> bool:
    """The allocator wrote why it cannot allocate into a NEW task of the service's current
    TaskTemplate (the tasks of an earlier spec may wait for something since resolved)."""
    template = service.spec.get("TaskTemplate") or {}
    task: Task
    for task in tx.find("tasks", service_id=service.id):
        if (task.status.state == TaskState.NEW and task.desired_state <= TaskState.COMPLETE
                and task.status.err and task.spec == template):
            return True
    return False


def settled_endpoint(tx: ReadTx, service: Service) -> bool:
    """Has the allocator nothing more to write into the service's `Endpoint` (or does the
    store show that it cannot write it for now)?"""
    ports = allocate_ports(service, lambda: PortClaims(tx.all("services"), but=service.id))
    if isinstance(ports, str):
        return True  # the allocator refuses it too
    networks = vip_networks(service, tx, lambda: find_ingress(tx.all("networks")))
    if isinstance(networks, str):
        return True
    held = held_vips(service)
    if any(network.id not in held for network in networks):
        return reason_recorded(tx, service)
    expected = endpoint_record(service, ports, [{"NetworkID": n.id, "Addr": held[n.id]} for n in networks])
    return expected == (service.endpoint or endpoint_record(service, [], []))


async def wait_for_endpoint(store: Store, service_id: str, bound: float = ENDPOINT_WAIT) -> bool:
    """Return once the service's endpoint is settled (or the service is gone): True; False when
    `bound` seconds passed first. Wakes on the store's events that can settle it: a write of the
    service, of one of its tasks, of a network. Call it only when an allocator writes into
    `store`: otherwise an endpoint still to allocate waits out the bound."""
    def settled(tx: ReadTx) -> bool:
        service: Service | None = tx.get("services", service_id)
        return service is None or settled_endpoint(tx, service)

    def concerns(event: Event) -> bool:
        table = event.table
        return (table == "networks" or (table == "services" and event.obj.id == service_id)
                or (table == "tasks" and event.obj.service_id == service_id))

    try:
        async with asyncio.timeout(bound):
            while True:
                done, sub = store.view_and_watch(settled, concerns, tables=("services", "networks", "tasks"))
                try:
                    while not done:
                        await sub.wait()
                        sub.drain()
                        done = store.view(settled)
                    return True
                except WatchDropped:
                    continue  # a fresh snapshot
                finally:
                    sub.close()
    except TimeoutError:
        log.info("service %s answered before the allocator wrote its endpoint (waited %.1fs)", service_id, bound)
        return False
