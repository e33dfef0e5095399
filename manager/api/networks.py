"""Engine API handlers for swarm networks: the cluster view merged with the node-local view, and
create, remove and prune with Docker's rules (overlay/ programs the data plane).

Theory of operation: a network is created in the store as asked (overlay driver, swarm scope);
the leader's allocator (manager/allocator) later fills in its subnet, gateway and VXLAN id. The
create request is checked first with Docker's texts and statuses: pre-defined names (403),
ingress and attachable together, IPAM configs and pinned VXLAN ids (400), a second ingress (409),
a name taken (409 "network with name X already exists"); a subnet or VXLAN id that clashes with
another network's is refused at once (Docker finds out only in the allocator, and logs it).
Removal follows swarmkit: a predefined network never; the ingress network not while a service
publishes an ingress-mode port; any other not while a service refers to it or a task that is
(desired and observed) at most running is attached to it (400 FailedPrecondition).

Reads merge two sources as dockerd's network routes do (../shared/networking.md §1.1): the
cluster store (managers only) and what this node instantiated (`LOCAL_NETWORKS`, see
local_networks.py: its endpoints, peers and services). `GET /networks` lists the cluster's
networks (the predefined ones left out), then the local ones not listed yet: so a worker, which
has no store, lists the swarm networks it instantiated, ingress always among them. `GET
/networks/{ref}` shows the local view of a network instantiated here (on a manager built on the
cluster object), else the cluster view; the ref is an exact ID, else a unique exact name, else a
unique ID prefix (two matches: 400 "2 matches found based on name: network X is ambiguous"), and
`scope` other than the network's (always "swarm") finds nothing (404). `POST /networks/prune`
removes, on a manager, every cluster network but ingress and the predefined ones that the
removal rules allow, skipping those in use; a worker has nothing of its own to prune.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from engineapi.bodykeys import NETWORK_CREATE
from engineapi.filters import request_filters
from engineapi.http import ApiError, Routes, go_bool, json_response, read_json
from manager.allocator import PREDEFINED_LABEL, IpamError, find_ingress, is_ingress, needs_ingress, plan_network
from manager.allocator.ipam import check_ipam_driver, parse_requested, parse_vni_list
from manager.api.cluster import CLUSTER, NOT_IN_SWARM, WORKER_NODE, cluster_store, write
from manager.api.local_networks import LocalNetwork, local_api, local_networks_of
from manager.api.objects_common import any_prefix, any_substring, api_errors, labels_match, require_spec_object
from manager.specs import SpecError, validate_network_create
from manager.specs.checks import drop_nulls
from manager.store import NameConflict, NotFound, ReadTx, Store, WriteTx
from model import Network, Node, Service, Task, TaskState, new_id, parse_time

log = logging.getLogger("shoal.api")

NETWORK_FILTERS = {"driver", "id", "label", "name", "scope", "type", "dangling"}
PRUNE_FILTERS = {"label", "label!", "until"}


PREDEFINED_NAMES = ("bridge", "host", "none")


def _rpc(code: str, desc: str) -> str:
    """How dockerd words an error it got from the swarm manager over gRPC."""
    return f"rpc error: code = {code} desc = {desc}"


def _check_create(body: dict[str, Any]) -> None:
    """swarmkit's validateNetworkSpec and the daemon's checks, in their order."""
    if body.get("Attachable") and body.get("Ingress"):
        raise SpecError(_rpc("InvalidArgument", "ingress network cannot be attachable"))
    if PREDEFINED_LABEL in (body.get("Labels") or {}):
        raise ApiError(403, _rpc("PermissionDenied", f"label {PREDEFINED_LABEL} is for internally created "
                                                     "predefined networks and cannot be applied by users"))
    try:
        check_ipam_driver(body.get("IPAM"))
        parse_requested(body.get("IPAM"))
    except IpamError as exc:
        raise SpecError(_rpc("InvalidArgument", exc.message)) from None
    try:
        parse_vni_list(body.get("Options"))
    except IpamError as exc:
        raise SpecError(exc.message) from None


def _stored_spec(body: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = drop_nulls(copy.deepcopy(body))
    spec.pop("CheckDuplicate", None)
    spec["Driver"] = spec.get("Driver") or "overlay"
    spec["Scope"] = "swarm"
    spec.setdefault("Labels", {})
    return spec


async def create_network(request: web.Request) -> web.Response:
    body = require_spec_object(await read_json(request, NETWORK_CREATE), "NetworkCreate")
    if body.get("Name") in PREDEFINED_NAMES:
        raise ApiError(403, f"{body['Name']} is a pre-defined network and cannot be created")
    access = request.app[CLUSTER]
    store = access.manager_store()
    if store is None:   # an overlay network needs the swarm: outside one 403, on a worker 503 (as dockerd)
        raise ApiError(503, WORKER_NODE) if access.is_worker() else ApiError(403, NOT_IN_SWARM)
    with api_errors():
        validate_network_create(body)
        if body.get("Scope") not in (None, "", "swarm"):
            raise SpecError(f"invalid NetworkCreate.Scope: {body['Scope']!r} (swarm networks have scope swarm)")
        _check_create(body)
        spec = _stored_spec(body)

        def create(tx: WriteTx) -> str:
            if tx.find("networks", name=spec["Name"]):
                raise ApiError(409, f"network with name {spec['Name']} already exists")
            networks: list[Network] = tx.all("networks")
            ingress = find_ingress(networks) if spec.get("Ingress") else None
            if ingress is not None:
                raise ApiError(409, _rpc("AlreadyExists", f"ingress network ({ingress.id}) is already present"))
            network = Network(id=new_id(), spec=spec)
            clusters = tx.all("clusters")
            try:  # what the allocator will do: a clash of subnets or VXLAN ids is refused now
                if clusters:
                    plan_network(network, networks, clusters[0].default_addr_pool, clusters[0].subnet_size)
                else:
                    plan_network(network, networks, ["10.0.0.0/8"], 24)
            except IpamError as exc:
                raise SpecError(exc.message) from None
            tx.create(network)
            return network.id

        try:
            network_id = await write(store, create)
        except NameConflict:
            raise ApiError(409, f"network with name {spec['Name']} already exists") from None
    return json_response({"Id": network_id, "Warning": ""}, status=201)


def _service_users(tx: ReadTx, network_id: str) -> list[Service]:
    services: list[Service] = tx.all("services")
    return [s for s in services
            if any(n.get("Target") == network_id
                   for n in (s.spec.get("TaskTemplate", {}).get("Networks") or []) + (s.spec.get("Networks") or []))]


def _dangling(tx: ReadTx, network: Network) -> bool:
    return not _service_users(tx, network.id) and not network.spec.get("Ingress")


def _dangling_filter(values: list[str]) -> bool | None:
    """The `dangling` network filter as dockerd reads it (daemon/network/filter.go): one value,
    "true"/"1" or "false"/"0"; None when absent."""
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, 'got more than one value for filter key "dangling"')
    if values[0] in ("true", "1"):
        return True
    if values[0] in ("false", "0"):
        return False
    raise ApiError(400, """invalid value for filter 'dangling', must be "true" (or "1"), or "false" (or "0")""")


def _is_predefined(network: Network) -> bool:
    return (network.spec.get("Labels") or {}).get(PREDEFINED_LABEL) == "true"


def _matches(filters: Any, api: dict[str, Any]) -> bool:
    return (any_prefix(filters.get("id"), api["Id"]) and any_substring(filters.get("name"), api["Name"])
            and labels_match(filters.get("label"), api["Labels"])
            and filters.exact_match("driver", api["Driver"]) and filters.exact_match("scope", api["Scope"])
            and (not filters.get("type") or "custom" in filters["type"]))


def _peer_names(tx: ReadTx) -> dict[str, str]:
    """Data-path address -> "<hostname>-<node id[:12]>", the name `Peers` gives a node."""
    nodes: list[Node] = tx.all("nodes")
    return {str(n.status.get("Addr")): f"{n.hostname or n.name}-{n.id[:12]}" for n in nodes if n.status.get("Addr")}


def _ingress_ports(tx: ReadTx) -> dict[str, list[str]]:
    """Service ID -> its ingress-mode published ports as the verbose view shows them."""
    out: dict[str, list[str]] = {}
    services: list[Service] = tx.all("services")
    for service in services:
        ports = service.endpoint.get("Ports") or (service.spec.get("EndpointSpec") or {}).get("Ports") or []
        shown = [f"Target: {p.get('TargetPort', 0)}, Publish: {p.get('PublishedPort', 0)}"
                 for p in ports if (p.get("PublishMode") or "ingress") == "ingress"]
        if shown:
            out[service.id] = shown
    return out


async def list_networks(request: web.Request) -> web.Response:
    access = request.app[CLUSTER]
    store = access.manager_store()
    filters = request_filters(request, NETWORK_FILTERS)
    for value in filters.get("type") or []:
        if value not in ("custom", "builtin"):
            raise ApiError(400, f"invalid filter: 'type'='{value}'")
    dangling = _dangling_filter(filters.get("dangling") or [])

    def select(tx: ReadTx) -> tuple[list[dict[str, Any]], dict[str, str]]:
        networks: list[Network] = tx.all("networks")
        out = []
        for n in sorted(networks, key=lambda n: n.created_at):
            if _is_predefined(n):
                continue
            api = n.to_api()
            if not _matches(filters, api):
                continue
            if dangling is not None and _dangling(tx, n) != dangling:
                continue
            out.append(api)
        return out, _peer_names(tx)

    listed, names = store.view(select) if store is not None else ([], {})
    seen = {n["Id"] for n in listed}
    for net in await local_networks_of(request.app):
        if net.id in seen:
            continue
        api = local_api(net, detailed=False, peer_names=names)
        if not _matches(filters, api):
            continue
        if dangling is not None and (not net.endpoints and not net.ingress) != dangling:
            continue
        listed.append(api)
    return json_response(listed)


class _Found:
    """What a network ref names: the cluster object and the local facts (either may be None)."""

    def __init__(self, network: Network | None, local: LocalNetwork | None) -> None:
        self.network = network
        self.local = local

    @property
    def id(self) -> str:
        return self.network.id if self.network is not None else self.local.id if self.local is not None else ""


async def _find(request: web.Request, ref: str, scope: str = "") -> _Found:
    """dockerd's lookup of `{ref}` over the local and the cluster networks: an exact ID, else
    a unique exact name, else a unique ID prefix; a `scope` other than "swarm" finds nothing."""
    store = request.app[CLUSTER].manager_store()
    local = {n.id: n for n in await local_networks_of(request.app)}
    cluster: dict[str, Network] = {}
    if store is not None:
        cluster = {n.id: n for n in store.view(lambda tx: tx.all("networks"))}
    if scope and scope != "swarm":      # every network shoal has is a swarm network
        raise ApiError(404, f"network {ref} not found")
    names = {**{i: n.name for i, n in local.items()}, **{i: n.name for i, n in cluster.items()}}

    def found(network_id: str) -> _Found:
        return _Found(cluster.get(network_id), local.get(network_id))

    if ref in names:
        return found(ref)
    by_name = sorted(i for i, name in names.items() if name == ref)
    if len(by_name) == 1:
        return found(by_name[0])
    if len(by_name) > 1:
        raise ApiError(400, f"{len(by_name)} matches found based on name: network {ref} is ambiguous")
    by_prefix = sorted(i for i in names if i.startswith(ref))
    if len(by_prefix) == 1:
        return found(by_prefix[0])
    if len(by_prefix) > 1:
        raise ApiError(400, f"{len(by_prefix)} matches found based on ID prefix: network {ref} is ambiguous")
    raise ApiError(404, f"network {ref} not found")


async def inspect_network(request: web.Request) -> web.Response:
    ref = request.match_info["ref"]
    verbose = go_bool(request, "verbose")
    hit = await _find(request, ref, request.query.get("scope", ""))
    base = hit.network.to_api() if hit.network is not None else None
    if hit.local is None:
        assert base is not None
        return json_response(base)
    store = request.app[CLUSTER].manager_store()
    names: dict[str, str] = {}
    ports: dict[str, list[str]] = {}
    if store is not None:
        names, ports = store.view(lambda tx: (_peer_names(tx), _ingress_ports(tx) if verbose else {}))
    return json_response(local_api(hit.local, base, verbose=verbose, peer_names=names, ports=ports))


def _remove_from(network_id: str, tx: WriteTx) -> None:
    _remove(tx, network_id)


def _remove(tx: WriteTx, network_id: str) -> None:
    """Delete a network, unless swarmkit's rules forbid it (SpecError with Docker's text)."""
    network: Network | None = tx.get("networks", network_id)
    if network is None:
        raise NotFound(f"network {network_id} not found")
    if _is_predefined(network):
        raise SpecError(_rpc("FailedPrecondition", f"network {network.id} ({network.name}) is a swarm "
                                                   "predefined network and cannot be removed"))
    if is_ingress(network):
        services: list[Service] = tx.all("services")
        for service in services:
            if needs_ingress(service):
                raise SpecError(_rpc("FailedPrecondition", "ingress network cannot be removed because "
                                                           f"service {service.id} depends on it"))
        tx.delete("networks", network.id)
        return
    users = _service_users(tx, network.id)
    if users:
        raise SpecError(_rpc("FailedPrecondition", f"network {network.id} is in use by service {users[0].id}"))
    tasks: list[Task] = tx.all("tasks")
    for task in tasks:
        if task.desired_state <= TaskState.RUNNING and task.status.state <= TaskState.RUNNING \
                and _task_uses(task, network.id):
            raise SpecError(_rpc("FailedPrecondition", f"network {network.id} is in use by task {task.id}"))
    tx.delete("networks", network.id)


async def remove_network(request: web.Request) -> web.Response:
    ref = request.match_info["ref"]
    hit = await _find(request, ref)
    store = cluster_store(request)      # found only locally: a worker cannot remove it (503)
    with api_errors():
        await write(store, lambda tx: _remove(tx, hit.id))
    return web.Response(status=204)


def _task_uses(task: Task, network_id: str) -> bool:
    return any((a.get("Network") or {}).get("ID") == network_id for a in task.networks_attachments) or \
        any(n.get("Target") == network_id for n in task.spec.get("Networks") or [])


# ---- prune -----------------------------------------------------------------------------------
_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _go_duration(text: str) -> float | None:
    """Seconds of a Go duration ("10m", "1h30m", "-1.5h"); None when `text` is not one."""
    sign, body = 1.0, text
    if body[:1] in "+-" and body:
        sign, body = (-1.0 if body[0] == "-" else 1.0), body[1:]
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(body):
        match = _DURATION.match(body, pos)
        if match is None or match.group(1) in ("", "."):
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return sign * total if body else None


def parse_until(value: str, now: float) -> float:
    """moby's timetypes.GetTimestamp for `until`: a Go duration before `now`, an RFC 3339 time or
    date (local time without a zone), or Unix seconds[.nanoseconds]."""
    if value != "0":
        seconds = _go_duration(value)
        if seconds is not None:
            return now - seconds
    bad = ApiError(400, f'failed to parse value as time or duration: "{value}"')
    if "-" in value:
        text = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("z", "Z")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            raise bad from None
        return (stamp if stamp.tzinfo is not None else stamp.astimezone()).timestamp()
    if not re.fullmatch(r"\d+(\.\d{1,9})?", value):
        raise bad
    return float(value)


def _until(filters: Any) -> float | None:
    values = filters.get("until") or []
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "more than one until filter specified")
    return parse_until(values[0], time.time())


def _prune_candidates(tx: ReadTx, filters: Any, until: float | None) -> list[Network]:
    networks: list[Network] = tx.all("networks")
    out = []
    for network in sorted(networks, key=lambda n: n.created_at):
        if is_ingress(network) or _is_predefined(network):     # the routing mesh goes only when asked
            continue
        if until is not None and network.created_at and parse_time(network.created_at) > until:
            continue
        labels = network.spec.get("Labels") or {}
        if not labels_match(filters.get("label"), labels):
            continue
        if filters.get("label!") and labels_match(filters.get("label!"), labels):
            continue
        out.append(network)
    return out


async def prune_networks(request: web.Request) -> web.Response:
    filters = request_filters(request, PRUNE_FILTERS)
    until = _until(filters)
    store: Store | None = request.app[CLUSTER].manager_store()
    deleted: list[str] = []
    if store is not None:
        for network in store.view(lambda tx: _prune_candidates(tx, filters, until)):
            try:
                await write(store, functools.partial(_remove_from, network.id))
            except SpecError as exc:        # in use: skipped, as dockerd does
                log.debug("prune keeps network %s: %s", network.name, exc.message)
                continue
            except NotFound:
                continue
            deleted.append(network.name)
    return json_response({"NetworksDeleted": deleted})


def add_routes(routes: Routes) -> None:
    routes.add("POST", "/networks/create", create_network)
    routes.add("POST", "/networks/prune", prune_networks)
    routes.add("GET", "/networks", list_networks)
    routes.add("GET", "/networks/{ref}", inspect_network)
    routes.add("DELETE", "/networks/{ref}", remove_network)
