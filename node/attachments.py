"""Standalone containers on attachable swarm overlays: `docker run --network <overlay>` and
`docker network connect <overlay> <container>` on any node of a swarm.

Theory of operation (swarmkit's network attachments, ../shared/networking.md):
- `OverlayAttachments.attach` asks the leader for an attachment over the cluster port
  (`dispatcher.attach_network`, manager/dispatcher/attachments.py; authenticated by the node's
  certificate): the leader writes an attachment task on this node, the allocator gives it an
  address, the dispatcher sends this node the network's view (and every other node using the
  network learns the new endpoint as a peer, and its DNS the container's name). The answer is the
  task, with its `NetworksAttachments`.
- `AttachingNetworking.attach_container` then builds the container's side like a task's sandbox:
  the container's own namespace (worker.localnet made it) is bind-mounted where the overlay host
  keeps the sandbox of the attachment task, so the overlay data path (one veth per network, the
  gateway bridge and default route unless the container has a way out already or the network is
  internal) and the embedded DNS at 127.0.0.11 are made in it; its resolv.conf names 127.0.0.11,
  as dockerd's does on user networks.
- Each container's attachments are one JSON record under `<data-dir>/attachments/` (network ID
  and name, attachment task ID, address, aliases): the node's truth for what to detach. A daemon
  restart keeps everything (live restore: the overlay host adopts the sandbox and restarts its
  DNS server, `retain` keeps it; the task stays in the cluster store).
- `detach` (network disconnect, container removal) removes the sandbox side (the bind is
  unmounted, the container keeps its namespace until it is removed) and asks the leader to delete
  the attachment task (`dispatcher.detach_network`), which frees the address; a leader that
  cannot be reached is logged: the task then outlives the container (as a node that left).
- `docker network inspect <overlay>` on this node lists the container under its ID and name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterable
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any, Protocol

from ca.node_tls import write_atomic
from engineapi.http import ApiError
from ingress.dns import resolv_conf
from manager.api.local_networks import LocalEndpoint, LocalNetwork
from model import Task
from node.networking import NodeNetworking, overlay_spec
from overlay import Attachment, netns
from rpc.client import RpcClient
from rpc.errors import NotFound, NotLeaderError, PermissionDenied, RpcError

log = logging.getLogger("shoal.attachments")

CALL_TIMEOUT = 20.0       # seconds for the leader to allocate an attachment
BALANCED_WAIT = 5.0       # seconds a new attachment waits for the node's load balancers on its networks


class SwarmMembership(Protocol):
    """What this module needs of node.swarm_node.SwarmNode."""

    @property
    def state(self) -> Any: ...
    @property
    def agent(self) -> Any: ...
    def client_context(self) -> Any: ...


async def call_leader(swarm: SwarmMembership, method: str, params: dict[str, Any]) -> Any:
    """Call `method` on the leader's cluster port: the manager the agent is connected to first,
    then the others; a follower's NotLeaderError names the leader, tried next."""
    state = swarm.state
    if state is None or getattr(swarm, "creds", True) is None:
        raise NotFound("this node is not part of a swarm")
    agent = swarm.agent
    candidates = [a for a in [getattr(agent, "connected_to", ""), *state.managers] if a]
    tried: set[str] = set()
    last: RpcError | None = None
    while candidates:
        addr = candidates.pop(0)
        if addr in tried:
            continue
        tried.add(addr)
        try:
            async with RpcClient(addr, swarm.client_context(), connect_timeout=3) as client:
                return await client.call(method, params, timeout=CALL_TIMEOUT)
        except NotLeaderError as e:
            leader = str(e.details.get("leader_addr") or "")
            if leader:
                candidates.insert(0, leader)
            last = e
        except (RpcError, OSError) as e:
            if isinstance(e, RpcError) and not isinstance(e, NotLeaderError) and e.code != "unavailable":
                raise
            last = e if isinstance(e, RpcError) else RpcError(str(e))
    raise last or RpcError("no manager to ask")


class AttachingNetworking(NodeNetworking):
    """The node's networking, plus the sandboxes of standalone containers' attachments (keyed by
    attachment task ID, like a task's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attachments: dict[str, tuple[str, str]] = {}    # attachment task ID -> (container ID, name)

    async def attach_container(self, task: Task, namespace: Path, way_out: bool) -> str:
        """Build the container's interfaces of `task`'s attachments in its namespace; returns
        the resolv.conf it should see (the embedded DNS)."""
        views, attached = await self._task_networks(task)
        key = task.id
        async with self._lock:
            host = await self._host_for(views.data_path_port)
            path = host.sandbox_path(key)
            await asyncio.to_thread(netns.bind, namespace, path)
            await host.create_sandbox(key)
            external = not all(view.internal for view, _ in attached)
            if key not in self._dns:
                await self._start_dns(key, path, [view.id for view, _ in attached], external)
            await host.attach(key, [Attachment(overlay_spec(view), IPv4Interface(address))
                                    for view, address in attached], external and way_out)
            self._remember(task)
        await self._until_balanced([view.id for view, _ in attached])
        return resolv_conf(self._host_resolv_conf())

    async def _until_balanced(self, network_ids: list[str]) -> None:
        """Wait (bounded) until this node has its own endpoint on these networks and the load
        balancers were programmed after that: the services' VIPs answer from the container's
        first packet. The node's endpoint is allocated once the attachment made the node a user
        of the network, so it comes in a later view than the attachment's own."""
        try:
            async with asyncio.timeout(BALANCED_WAIT):
                while True:
                    synced, views = self._synced, self._views
                    if views is not None and all((v := views.views.get(i)) is not None and v.node_address
                                                 for i in network_ids):
                        break
                    await synced.wait()
                async with self._balance_lock:    # the sync that brought it programs them under it
                    pass
        except TimeoutError:
            log.warning("the node's own endpoint on the container's networks is not there yet; the "
                        "services' virtual IPs may not answer at once", extra={"networks": network_ids})

    async def retain(self, task_ids: Iterable[str]) -> None:
        await super().retain([*task_ids, *self.attachments])

    async def local_networks(self, own_name: str = "") -> list[LocalNetwork]:
        out = []
        for net in await super().local_networks(own_name):
            if any(ep.container_id in self.attachments for ep in net.endpoints):
                endpoints = tuple(LocalEndpoint(*self.attachments[ep.container_id], ep.address)
                                  if ep.container_id in self.attachments else ep for ep in net.endpoints)
                net = dataclasses.replace(net, endpoints=endpoints)
            out.append(net)
        return out


class OverlayAttachments:
    """worker.localnet's `OverlayAttacher` on a swarm node."""

    def __init__(self, root: Path, networking: AttachingNetworking, swarm: SwarmMembership) -> None:
        self.root = root
        self.networking = networking
        self.swarm = swarm
        self.lock = asyncio.Lock()
        for cid, record in self._all().items():
            for network in record:
                networking.attachments[network["task_id"]] = (cid, network["container_name"])

    # ---- records ---------------------------------------------------------------------------
    def _all(self) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            try:
                out[path.stem] = list(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def _load(self, cid: str) -> list[dict[str, Any]]:
        try:
            return list(json.loads((self.root / f"{cid}.json").read_text()))
        except (OSError, ValueError):
            return []

    def _save(self, cid: str, networks: list[dict[str, Any]]) -> None:
        path = self.root / f"{cid}.json"
        if not networks:
            path.unlink(missing_ok=True)
            return
        write_atomic(path, json.dumps(networks).encode())   # fsynced: a restart must find it

    def attached(self, cid: str) -> list[dict[str, Any]]:
        return [{"Id": n["id"], "Name": n["name"]} for n in self._load(cid)]

    # ---- attach / detach -------------------------------------------------------------------
    async def attach(self, ref: str, cid: str, name: str, namespace: Path, config: dict[str, Any],
                     way_out: bool) -> dict[str, Any] | None:
        if self.swarm.state is None:
            return None
        if any(ref in (n["id"], n["name"]) for n in self._load(cid)):
            raise ApiError(403, f"endpoint with name {name} already exists in network {ref}")
        aliases = [str(a) for a in config.get("Aliases") or []]
        if (config.get("IPAMConfig") or {}).get("IPv4Address"):
            raise ApiError(400, "user specified IP address is not supported on swarm networks by shoal yet")
        try:
            reply = await call_leader(self.swarm, "dispatcher.attach_network",
                                      {"network": ref, "container_id": cid, "container_name": name,
                                       "aliases": aliases})
        except NotFound:
            return None
        except PermissionDenied as e:
            raise ApiError(403, f"Could not attach to network {ref}: rpc error: code = PermissionDenied "
                                f"desc = {e.message}") from None
        except RpcError as e:
            raise ApiError(503, f"Could not attach to network {ref}: {e.message}") from None
        task = Task.from_record(reply["task"])
        attachment = task.networks_attachments[0]
        network = attachment.get("Network") or {}
        network_id = str(network.get("ID") or "")
        network_name = str((network.get("Spec") or {}).get("Name") or ref)
        address = str((attachment.get("Addresses") or [""])[0])
        async with self.lock:
            networks = [n for n in self._load(cid) if n["id"] != network_id]
            self.networking.attachments[task.id] = (cid, name)
            try:
                resolv = await self.networking.attach_container(task, namespace, way_out)
            except BaseException:
                self.networking.attachments.pop(task.id, None)
                await self._forget(task.id, network_id, cid)
                raise
            networks.append({"id": network_id, "name": network_name, "task_id": task.id, "address": address,
                             "aliases": aliases, "container_name": name})
            self._save(cid, networks)
        log.info("container attached to a swarm network",
                 extra={"container": cid, "network": network_name, "address": address})
        return {"id": network_id, "name": network_name, "address": address, "aliases": aliases,
                "gateway": "", "resolv_conf": resolv}

    async def detach(self, ref: str, cid: str) -> dict[str, Any] | None:
        async with self.lock:
            networks = self._load(cid)
            found = next((n for n in networks if ref in (n["id"], n["name"])), None)
            if found is None:
                found = next((n for n in networks if n["id"].startswith(ref)), None)
            if found is None:
                return None
            await self._forget(found["task_id"], found["id"], cid)
            self._save(cid, [n for n in networks if n is not found])
        return {"Id": found["id"], "Name": found["name"]}

    async def _forget(self, task_id: str, network_id: str, cid: str) -> None:
        try:
            await self.networking.release(task_id)
        except Exception as e:
            log.warning("removing the attachment's interfaces failed: %s", e, extra={"container": cid})
        self.networking.attachments.pop(task_id, None)
        try:
            await call_leader(self.swarm, "dispatcher.detach_network", {"task_id": task_id})
        except RpcError as e:
            log.warning("the leader could not detach the container: %s", e.message,
                        extra={"container": cid, "network": network_id, "task": task_id})
