"""The network allocator: subnets and VXLAN ids for networks, service endpoints (virtual IPs
and published ports), addresses for tasks and nodes. Leader only.

Theory of operation (level-triggered, like the scheduler): `load` takes everything from one
snapshot (the address book of what is in use, the unallocated networks, the NEW tasks, every
node); events only update that and mark networks, nodes and tasks to look at. Each `tick()` is
one store batch of small transactions that re-read what they change:
1. every unallocated network gets its subnets, gateways and VXLAN ids (`plan_network`);
2. every service that changed (or waits for something that changed) gets its `Endpoint`: its
   published ports (ports.py: explicit ingress ports re-checked against the other services, a
   port asked as 0 the lowest free one of 30000-32767, kept once chosen) and, in vip mode, one
   virtual IP on ingress when it publishes an ingress-mode port, then one per network of its
   spec in order (TaskTemplate.Networks, else Spec.Networks). A VIP it holds keeps its address;
   one on a network it no longer uses (or all of them, in dnsrr mode) is dropped, which frees it.
   A service that cannot get its endpoint keeps the one it had (nothing half done is written);
   its NEW tasks wait with the reason, and it is tried again when an address or a port is freed
   or a network changes. What the endpoint is to be (endpoints.py) is shared with the service
   API, which answers a create or an update once this write is in the store;
3. every node whose needs changed gets one address on ingress and on each network its live
   tasks use, and loses those it no longer needs;
4. every NEW task gets one address per network it attaches to (ingress first when its service
   publishes an ingress-mode port, then TaskTemplate.Networks in order), written as
   `NetworksAttachments`, and moves to PENDING ("pending task scheduling") for the scheduler.
   A task that cannot get them stays NEW with the reason in Status.Err, naming the network
   (`no IP address left on network "tiny" (10.9.0.0/29)`), and is tried again as soon as an
   address on that network is freed or the network changes.

Invariants:
- Nothing lives only in this object. Used addresses are what the store's tasks, nodes and
  services hold (see book.py); a freed address is simply no longer held by anyone. Published
  ports are what the services' specs and `Endpoint.Ports` say, read in the transaction that
  allocates a new one.
- Every address handed out moves its network's `address_cursor` in the same transaction, and
  the next search starts after it: addresses go out in ascending order and wrap around, so a
  freed address is not reused at once, on this leader or the next one.
- Two allocations on one network always write that network, so they conflict on its version:
  if a deposed leader's allocation commits first, the new leader's write is rejected as stale
  and retried from the new state; no address is handed out twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from manager.allocator.book import AddressBook, attachment_networks
from manager.allocator.endpoints import endpoint_record, find_network, held_vips, vip_networks
from manager.allocator.ipam import IPAddress, IpamError, SubnetConfig, next_address
from manager.allocator.networks import (
    allocated_configs,
    find_ingress,
    is_ingress,
    needs_ingress,
    plan_network,
    task_network_refs,
)
from manager.allocator.ports import PortClaims, allocate_ports
from manager.store import Batch, Event, ReadTx, StaleVersion, Store, WatchDropped, WriteTx
from model import Network, Node, Service, Task, TaskState, format_time

log = logging.getLogger(__name__)

_NEW, _PENDING, _COMPLETE = TaskState.NEW, TaskState.PENDING, TaskState.COMPLETE
PENDING_MESSAGE = "pending task scheduling"
RETRY_AFTER_ERROR = 1.0  # seconds before writes that lost to concurrent ones are tried again
MAX_IMMEDIATE_RETRIES = 3
DEFAULT_POOLS = ["10.0.0.0/8"]
DEFAULT_SUBNET_SIZE = 24


def wants_addresses(task: Task) -> bool:
    """A NEW task that is meant to run (what the allocator moves to PENDING)."""
    return task.status.state == _NEW and task.desired_state <= _COMPLETE


def _ports_of(service: Service) -> tuple[Any, Any]:
    """What a service speaks for among published ports (its spec's and its allocated ones)."""
    return (service.spec.get("EndpointSpec") or {}).get("Ports"), (service.endpoint or {}).get("Ports")


def _service_key(service_id: str) -> str:
    """What a task waiting for its service's endpoint is blocked on (beside network IDs)."""
    return "service:" + service_id


class _Used:
    """Addresses in use on one network: the book's plus those handed out in this round."""

    __slots__ = ("_book", "_round")

    def __init__(self, book: dict[int, int], taken: set[int]) -> None:
        self._book, self._round = book, taken

    def __contains__(self, address: object) -> bool:
        return address in self._book or address in self._round


@dataclass
class _Round:
    now: str
    taken: dict[str, set[int]] = field(default_factory=dict)  # network ID -> addresses handed out
    full: dict[str, str] = field(default_factory=dict)  # network ID -> why no address is left
    views: dict[str, dict[str, Any]] = field(default_factory=dict)  # network ID -> its swarm view
    ingress: Network | None = None
    ingress_known: bool = False
    publishes: dict[str, bool] = field(default_factory=dict)  # service ID -> needs ingress
    services: dict[str, str] = field(default_factory=dict)  # service ID -> why no endpoint ("": it has one)


class Allocator:
    TABLES = ("networks", "tasks", "nodes", "services", "clusters")

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.book = AddressBook()
        self.unallocated: set[str] = set()  # networks to allocate
        self.network_errors: dict[str, str] = {}  # network ID -> why it could not be allocated
        self.new_tasks: dict[str, Task] = {}  # NEW tasks to give addresses
        self.blocked: dict[str, str] = {}  # task ID -> the network ID (or reference) it waits for
        self.dirty_nodes: set[str] | None = None  # None: every node
        self.waiting_nodes: dict[str, set[str]] = {}  # network ID -> nodes waiting for an address on it
        self.dirty_services: set[str] | None = None  # services to (re)allocate; None: every one
        self.failed_services: dict[str, str] = {}  # service ID -> why its endpoint cannot be allocated
        self.ticks = 0

    # -- state from the store -----------------------------------------------------------------
    def load(self, tx: ReadTx) -> None:
        networks: list[Network] = tx.all("networks")
        tasks: list[Task] = tx.all("tasks")
        self.book.load(tasks, tx.all("nodes"), tx.all("services"))
        self.unallocated = {n.id for n in networks if not n.allocated}
        self.network_errors = {}
        self.new_tasks = {t.id: t for t in tasks if wants_addresses(t)}
        self.blocked = {}
        self.dirty_nodes = None
        self.waiting_nodes = {}
        self.dirty_services = None
        self.failed_services = {}

    def handle(self, event: Event) -> None:
        table, obj = event.table, event.obj
        gone = event.op == "delete"
        if table == "tasks":
            if obj.networks_attachments or self.book.tracks_task(obj.id):  # else nothing to hold or free
                freed, nodes = self.book.task(obj.id, None if gone else obj)
                self._wake(freed)
                self._mark_nodes(nodes)
            if not gone and obj.status.state is _NEW and obj.desired_state <= _COMPLETE:  # wants_addresses
                self.new_tasks[obj.id] = obj
            else:
                self.new_tasks.pop(obj.id, None)
                if self.blocked:
                    self.blocked.pop(obj.id, None)
        elif table == "networks":
            self._network_event(obj, event.old, gone)
        elif table == "nodes":
            self._wake(self.book.node(obj.id, None if gone else obj))
            if gone:
                if self.dirty_nodes is not None:
                    self.dirty_nodes.discard(obj.id)
            elif event.old is None or event.old.attachments != obj.attachments:
                self._mark_nodes({obj.id})
        elif table == "services":
            self._wake(self.book.service(obj.id, None if gone else obj))
            if gone:
                self.failed_services.pop(obj.id, None)
                if self.dirty_services is not None:
                    self.dirty_services.discard(obj.id)
            if gone or event.old is None or _ports_of(event.old) != _ports_of(obj):
                self._mark_services(self.failed_services)  # ports may have been freed
            if not gone and (event.old is None or event.old.spec != obj.spec):
                self._mark_services({obj.id})
            if not gone and (event.old is None or event.old.spec.get("EndpointSpec") != obj.spec.get("EndpointSpec")):
                self.blocked = {t: n for t, n in self.blocked.items()
                                if self.new_tasks.get(t) is None or self.new_tasks[t].service_id != obj.id}
        elif table == "clusters":
            old = event.old
            if old is None or (old.default_addr_pool, old.subnet_size) != (obj.default_addr_pool, obj.subnet_size):
                self.network_errors.clear()

    def _network_event(self, network: Network, old: Network | None, gone: bool) -> None:
        if gone or old is None or old.allocated != network.allocated or old.ipam != network.ipam:
            # services may wait for it; a new or gone ingress concerns every service that publishes
            if is_ingress(network) or (old is not None and is_ingress(old)):
                self.dirty_services = None
            else:
                self._mark_services(self.failed_services)
        if gone:
            self.unallocated.discard(network.id)
            self.network_errors.clear()  # its subnet and ids are free again: retry the others
            self.blocked.clear()
            self.dirty_nodes = None
            return
        if not network.allocated:
            self.unallocated.add(network.id)
            if old is None:
                self.blocked.clear()  # tasks may have waited for a network of this name
            return
        self.unallocated.discard(network.id)
        self.network_errors.pop(network.id, None)
        if old is None:
            self.blocked.clear()  # tasks may have waited for a network of this name
        if old is None or not old.allocated or old.ipam != network.ipam or old.driver_state != network.driver_state:
            self._wake({network.id})
            self.dirty_nodes = None

    def _wake(self, network_ids: Iterable[str]) -> None:
        """Something was freed on (or changed about) these networks: retry who waits for them."""
        network_ids = set(network_ids)
        if not network_ids:
            return
        if self.blocked:
            self.blocked = {t: n for t, n in self.blocked.items() if n not in network_ids}
        for network_id in network_ids:
            self._mark_nodes(self.waiting_nodes.pop(network_id, set()))
        self._mark_services(self.failed_services)

    def _mark_nodes(self, node_ids: Iterable[str]) -> None:
        if self.dirty_nodes is not None:
            self.dirty_nodes.update(node_ids)

    def _mark_services(self, service_ids: Iterable[str]) -> None:
        if self.dirty_services is not None:
            self.dirty_services.update(service_ids)

    # -- one round --------------------------------------------------------------------------------
    async def tick(self) -> bool:
        """One allocation round. Returns True when a write lost to a concurrent one (try again)."""
        self.ticks += 1
        network_ids = [i for i in self.unallocated if i not in self.network_errors]
        if self.dirty_nodes is None:
            node_ids = self.store.view(lambda tx: [n.id for n in tx.all("nodes")])
        else:
            node_ids = sorted(self.dirty_nodes)
        self.dirty_nodes = set()
        if self.dirty_services is None:
            service_ids = self.store.view(lambda tx: [s.id for s in sorted(tx.all("services"),
                                                                           key=lambda s: (s.created_at, s.id))])
        else:
            service_ids = sorted(self.dirty_services)
        self.dirty_services = set()
        # a task waiting for its service's endpoint comes along whenever the service is tried
        retried = {_service_key(i) for i in service_ids} if self.blocked else set()
        tasks = sorted((t for t in self.new_tasks.values()
                        if t.id not in self.blocked or self.blocked[t.id] in retried),
                       key=lambda t: (t.created_at, t.id))
        if not network_ids and not service_ids and not node_ids and not tasks:
            return False
        if network_ids:
            created = self.store.view(lambda tx: {i: (n.created_at, i) for i in network_ids
                                                  if (n := tx.get("networks", i)) is not None})
            network_ids = sorted(created, key=created.__getitem__)
        state = _Round(format_time(self.clock()))

        def queue(batch: Batch) -> None:
            for network_id in network_ids:
                batch.update(functools.partial(self._network_tx, network_id))
            for service_id in service_ids:
                batch.update(functools.partial(self._service_tx, service_id, state))
            for node_id in node_ids:
                batch.update(functools.partial(self._node_tx, node_id, state))
            for task in tasks:
                batch.update(functools.partial(self._task_tx, task.id, state))

        result = await self.store.batch(queue)
        retry = False
        woken: set[str] = set()
        jobs = [("network", i) for i in network_ids] + [("service", i) for i in service_ids] + \
            [("node", i) for i in node_ids] + [("task", t.id) for t in tasks]
        for (kind, object_id), value, error in zip(jobs, result.results, result.errors, strict=True):
            if error is not None:
                if isinstance(error, StaleVersion):
                    log.info("allocator: writing %s %s gave way (%s); retrying", kind, object_id, error)
                else:
                    log.warning("allocator: writing %s %s failed; retrying", kind, object_id, exc_info=error)
                retry = True
                if kind == "node":
                    self._mark_nodes({object_id})
                elif kind == "service":
                    self._mark_services({object_id})
            elif kind == "service":
                self._service_result(object_id, value, woken)
            elif kind == "network" and value:
                self.network_errors[object_id] = value
                log.warning("allocator: network %s cannot be allocated: %s", object_id, value)
                woken.add(object_id)  # its tasks say why in their next round
            elif kind == "node":
                for network_id in value:
                    self.waiting_nodes.setdefault(network_id, set()).add(object_id)
            elif kind == "task" and value:
                self.blocked[object_id] = value
        self._wake(woken)
        return retry

    def _service_result(self, service_id: str, reason: str | None, woken: set[str]) -> None:
        before = self.failed_services.get(service_id)
        if reason:
            if reason != before:
                log.warning("allocator: service %s: %s", service_id, reason)
            self.failed_services[service_id] = reason
        elif before is not None:
            del self.failed_services[service_id]
            woken.add(_service_key(service_id))  # its tasks waited for it

    # -- the transactions (each re-reads what it changes) ---------------------------------------
    def _network_tx(self, network_id: str, tx: WriteTx) -> str | None:
        """Allocate one network; returns why it cannot be, if so."""
        network: Network | None = tx.get("networks", network_id)
        if network is None or network.allocated:
            return None
        clusters = tx.all("clusters")
        pools = list(clusters[0].default_addr_pool) if clusters else DEFAULT_POOLS
        size = int(clusters[0].subnet_size) if clusters else DEFAULT_SUBNET_SIZE
        try:
            plan = plan_network(network, tx.all("networks"), pools or DEFAULT_POOLS, size or DEFAULT_SUBNET_SIZE)
        except IpamError as exc:
            return exc.message
        updated = network.copy()
        updated.ipam, updated.driver_state = plan.ipam, plan.driver_state
        tx.update(updated)
        return None

    def _ingress(self, tx: WriteTx, state: _Round) -> Network | None:
        if not state.ingress_known:
            state.ingress, state.ingress_known = find_ingress(tx.all("networks")), True
        return state.ingress

    def _view(self, network: Network, state: _Round) -> dict[str, Any]:
        view = state.views.get(network.id)
        if view is None:
            view = state.views[network.id] = network.to_swarm_api()
        return copy.deepcopy(view)

    def _pick(self, tx: WriteTx, network: Network, state: _Round) -> tuple[SubnetConfig, IPAddress] | str:
        """The next free address of `network` (not yet handed out), or why there is none."""
        if network.id in state.full:
            return state.full[network.id]
        network = tx.get("networks", network.id) or network  # its cursor as this round left it
        used = _Used(self.book.used_on(network.id), state.taken.get(network.id, set()))
        configs = [c for c in allocated_configs(network) if c.subnet.version == 4]
        for config in configs:
            address = next_address(config, used, network.address_cursor.get(str(config.subnet)))
            if address is not None:
                return config, address
        reason = f'no IP address left on network "{network.name}" ({", ".join(str(c.subnet) for c in configs)})'
        state.full[network.id] = reason
        return reason

    def _hand_out(self, tx: WriteTx, network_id: str, config: SubnetConfig, address: IPAddress,
                  state: _Round) -> str:
        """Record `address` as handed out: move the network's cursor in this transaction."""
        current: Network = tx.get("networks", network_id)
        updated = current.copy()
        updated.address_cursor = {**current.address_cursor, str(config.subnet): str(address)}
        tx.update(updated)
        state.taken.setdefault(network_id, set()).add(int(address))
        return f"{address}/{config.prefix}"

    def _service_tx(self, service_id: str, state: _Round, tx: WriteTx) -> str | None:
        """Bring one service's Endpoint in line with its spec; returns why it cannot be, if so."""
        service: Service | None = tx.get("services", service_id)
        if service is None:
            state.services[service_id] = ""
            return None
        ports = allocate_ports(service, lambda: PortClaims(tx.all("services"), but=service_id))
        if isinstance(ports, str):
            state.services[service_id] = ports
            return ports
        vips = self._plan_vips(service, state, tx)
        if isinstance(vips, str):
            state.services[service_id] = vips
            return vips
        endpoint = endpoint_record(service, ports, [
            {"NetworkID": network.id, "Addr": addr if isinstance(addr, str) else
             self._hand_out(tx, network.id, *addr, state)} for network, addr in vips])
        state.services[service_id] = ""
        if endpoint != (service.endpoint or endpoint_record(service, [], [])):
            updated = service.copy()
            updated.endpoint = endpoint
            tx.update(updated)
        return None

    def _plan_vips(self, service: Service, state: _Round,
                   tx: WriteTx) -> list[tuple[Network, str | tuple[SubnetConfig, IPAddress]]] | str:
        """The service's VIPs in order (ingress first, then its networks): the address it holds,
        or a free one to hand out; or why one cannot be had. Nothing is handed out here."""
        networks = vip_networks(service, tx, lambda: self._ingress(tx, state))
        if isinstance(networks, str):
            return networks
        held = held_vips(service)
        out: list[tuple[Network, str | tuple[SubnetConfig, IPAddress]]] = []
        for network in networks:
            if network.id in held:
                out.append((network, held[network.id]))
                continue
            if not network.allocated:
                reason = self.network_errors.get(network.id)
                return f'network "{network.name}" is not allocated yet' + (f": {reason}" if reason else "")
            picked = self._pick(tx, network, state)
            if isinstance(picked, str):
                return f"{picked} for the service's virtual IP"
            state.taken.setdefault(network.id, set()).add(int(picked[1]))  # two services, one round
            out.append((network, picked))
        return out

    def _node_tx(self, node_id: str, state: _Round, tx: WriteTx) -> list[str]:
        """Bring one node's attachments in line; returns the networks it waits for."""
        node: Node | None = tx.get("nodes", node_id)
        if node is None:
            return []
        wanted: list[Network] = []
        ingress = self._ingress(tx, state)
        if ingress is not None and ingress.allocated:
            wanted.append(ingress)
        for network_id in sorted(self.book.node_networks.get(node_id, {})):
            network = tx.get("networks", network_id)
            if network is not None and network.allocated and all(n.id != network_id for n in wanted):
                wanted.append(network)
        wanted_ids = {n.id for n in wanted}
        kept: list[dict[str, Any]] = []
        for attachment in node.attachments:
            ids = attachment_networks([attachment])
            if ids and ids[0] in wanted_ids and ids[0] not in attachment_networks(kept):
                kept.append(attachment)
        have = set(attachment_networks(kept))
        missing = [n for n in wanted if n.id not in have]
        if not missing and len(kept) == len(node.attachments):
            return []
        waits = []
        attachments = list(kept)
        for network in missing:
            picked = self._pick(tx, network, state)
            if isinstance(picked, str):
                log.warning("allocator: node %s has no endpoint on network %s: %s", node_id, network.id, picked)
                waits.append(network.id)
                continue
            address = self._hand_out(tx, network.id, *picked, state)
            attachments.append({"Network": self._view(network, state), "Addresses": [address]})
        if attachments != node.attachments:
            updated = node.copy()
            updated.attachments = attachments
            tx.update(updated)
        return waits

    def _task_tx(self, task_id: str, state: _Round, tx: WriteTx) -> str | None:
        """Give one NEW task its addresses and move it to PENDING; returns the network it waits
        for when it cannot get them (its Status.Err says why)."""
        task: Task | None = tx.get("tasks", task_id)
        if task is None or not wants_addresses(task):
            return None
        service = tx.get("services", task.service_id)
        waits = state.services.get(task.service_id)
        if waits is None:
            waits = self.failed_services.get(task.service_id, "")
        if waits and service is not None:
            return self._wait(tx, task, _service_key(task.service_id), waits)
        publishes = state.publishes.get(task.service_id)
        if publishes is None:
            publishes = state.publishes[task.service_id] = needs_ingress(service)
        networks: list[Network] = []
        if publishes:
            ingress = self._ingress(tx, state)
            if ingress is not None:
                networks.append(ingress)
        for ref in task_network_refs(task, service):
            network = find_network(tx, ref)
            if network is None:
                return self._wait(tx, task, ref, f"network {ref} not found")
            if all(n.id != network.id for n in networks):
                networks.append(network)
        picks: list[tuple[Network, SubnetConfig, IPAddress]] = []
        for network in networks:
            if not network.allocated:
                reason = self.network_errors.get(network.id)
                return self._wait(tx, task, network.id, f'network "{network.name}" is not allocated yet'
                                  + (f": {reason}" if reason else ""))
            picked = self._pick(tx, network, state)
            if isinstance(picked, str):
                return self._wait(tx, task, network.id, picked)
            picks.append((network, *picked))
        attachments = []
        for network, config, address in picks:
            text = self._hand_out(tx, network.id, config, address, state)
            attachments.append({"Network": self._view(network, state), "Addresses": [text]})
        updated = task.copy()
        updated.networks_attachments = attachments
        updated.status.advance(_PENDING, state.now, PENDING_MESSAGE)
        tx.update(updated)
        return None

    @staticmethod
    def _wait(tx: WriteTx, task: Task, network_ref: str, reason: str) -> str:
        """Leave the task NEW with `reason` in Status.Err (written only when it changes)."""
        if task.status.err != reason:
            updated = task.copy()
            updated.status.advance(_NEW, task.status.timestamp, task.status.message, err=reason)
            tx.update(updated)
        return network_ref

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Leader-only loop; cancel it when leadership ends."""
        while True:
            _, sub = self.store.view_and_watch(self.load, tables=self.TABLES)
            try:
                retries = 0
                while True:
                    retry = await self.tick()
                    events = sub.drain()
                    for event in events:
                        self.handle(event)
                    if events and not retry:
                        continue   # commits landed while the round ran (others' or its own): another round
                    if retry and retries < MAX_IMMEDIATE_RETRIES:
                        retries += 1
                        continue
                    retries = 0
                    if retry:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(RETRY_AFTER_ERROR):
                                await sub.wait()
                    else:
                        await sub.wait()
                    for event in sub.drain():
                        self.handle(event)
            except WatchDropped:
                continue
            finally:
                sub.close()
