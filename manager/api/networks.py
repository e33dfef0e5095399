"""Engine API handlers for swarm networks (the objects only; overlay/ programs the data plane).

Theory of operation: a network is created in the store as asked (overlay driver, swarm scope);
the leader's allocator (manager/allocator) later fills in its subnet, gateway and VXLAN id. The
create request is checked first with Docker's texts and statuses: pre-defined names (403),
ingress and attachable together, IPAM configs and pinned VXLAN ids (400), a second ingress (409),
a name taken (409 "network with name X already exists"); a subnet or VXLAN id that clashes with
another network's is refused at once (Docker finds out only in the allocator, and logs it).
Removal follows swarmkit: a predefined network never; the ingress network not while a service
publishes an ingress-mode port; any other not while a service refers to it or a task that is
(desired and observed) at most running is attached to it (400 FailedPrecondition).
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from engineapi.filters import request_filters
from engineapi.http import ApiError, Routes, json_response, read_json
from manager.allocator import PREDEFINED_LABEL, IpamError, find_ingress, is_ingress, needs_ingress, plan_network
from manager.allocator.ipam import check_ipam_driver, parse_requested, parse_vni_list
from manager.api.cluster import cluster_store
from manager.api.objects_common import any_prefix, any_substring, api_errors, labels_match, lookup, require_spec_object
from manager.specs import SpecError, validate_network_create
from manager.specs.checks import drop_nulls
from manager.store import NameConflict, ReadTx, WriteTx
from model import Network, Service, Task, TaskState, new_id

NETWORK_FILTERS = {"driver", "id", "label", "name", "scope", "type", "dangling"}


PREDEFINED_NAMES = ("bridge", "host", "none")


def _rpc(code: str, desc: str) -> str:
    """How dockerd words an error it got from the swarm manager over gRPC."""
    return f"rpc error: code = {code} desc = {desc}"


def _check_create(body: dict[str, Any]) -> None:
    """swarmkit's validateNetworkSpec and the daemon's checks, in their order."""
    name = body.get("Name")
    if name in PREDEFINED_NAMES:
        raise ApiError(403, f"{name} is a pre-defined network and cannot be created")
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
    store = cluster_store(request)
    body = require_spec_object(await read_json(request), "NetworkCreate")
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
            network_id = await store.update(create)
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


async def list_networks(request: web.Request) -> web.Response:
    store = cluster_store(request)
    filters = request_filters(request, NETWORK_FILTERS)
    for value in filters.get("type") or []:
        if value not in ("custom", "builtin"):
            raise ApiError(400, f"invalid filter: 'type'='{value}'")
    dangling = _dangling_filter(filters.get("dangling") or [])

    def select(tx: ReadTx) -> list[dict[str, Any]]:
        networks: list[Network] = tx.all("networks")
        out = []
        for n in sorted(networks, key=lambda n: n.created_at):
            api = n.to_api()
            if not (any_prefix(filters.get("id"), n.id) and any_substring(filters.get("name"), n.name)
                    and labels_match(filters.get("label"), api["Labels"])
                    and filters.exact_match("driver", api["Driver"]) and filters.exact_match("scope", "swarm")
                    and (not filters.get("type") or "custom" in filters["type"])):
                continue
            if dangling is not None and _dangling(tx, n) != dangling:
                continue
            out.append(api)
        return out

    return json_response(store.view(select))


async def inspect_network(request: web.Request) -> web.Response:
    store = cluster_store(request)
    ref = request.match_info["ref"]
    scope = request.query.get("scope", "")
    with api_errors():
        network: Network = store.view(lambda tx: lookup(tx, "networks", ref))
    if scope and scope != "swarm":
        raise ApiError(404, f"network {ref} not found")
    return json_response(network.to_api())


async def remove_network(request: web.Request) -> web.Response:
    store = cluster_store(request)
    ref = request.match_info["ref"]
    with api_errors():

        def remove(tx: WriteTx) -> None:
            network: Network = lookup(tx, "networks", ref)
            if (network.spec.get("Labels") or {}).get(PREDEFINED_LABEL) == "true":
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
                raise SpecError(_rpc("FailedPrecondition", f"network {network.id} is in use by service "
                                                           f"{users[0].id}"))
            tasks: list[Task] = tx.all("tasks")
            for task in tasks:
                if task.desired_state <= TaskState.RUNNING and task.status.state <= TaskState.RUNNING \
                        and _task_uses(task, network.id):
                    raise SpecError(_rpc("FailedPrecondition", f"network {network.id} is in use by task "
                                                               f"{task.id}"))
            tx.delete("networks", network.id)

        await store.update(remove)
    return web.Response(status=204)


def _task_uses(task: Task, network_id: str) -> bool:
    return any((a.get("Network") or {}).get("ID") == network_id for a in task.networks_attachments) or \
        any(n.get("Target") == network_id for n in task.spec.get("Networks") or [])


def add_routes(routes: Routes) -> None:
    routes.add("POST", "/networks/create", create_network)
    routes.add("GET", "/networks", list_networks)
    routes.add("GET", "/networks/{ref}", inspect_network)
    routes.add("DELETE", "/networks/{ref}", remove_network)
