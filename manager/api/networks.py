"""Engine API handlers for swarm networks (the objects only; overlay/ programs the data plane).

Theory of operation: a network is created in the store as asked (overlay driver, swarm scope);
the allocator later fills in its subnet and VXLAN id. Names are unique (409 "network with name X
already exists"); only one ingress network may exist. A network cannot be removed while a
service or a live task uses it (400), and the ingress network not while a service publishes a
port through it.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from aiohttp import web

from engineapi.filters import request_filters
from engineapi.http import ApiError, Routes, json_response, read_json
from manager.api.cluster import cluster_store
from manager.api.objects_common import any_prefix, any_substring, api_errors, labels_match, lookup, require_spec_object
from manager.specs import SpecError, validate_network_create
from manager.specs.checks import drop_nulls
from manager.store import NameConflict, ReadTx, WriteTx
from model import Network, Service, Task, TaskState, new_id

NETWORK_FILTERS = {"driver", "id", "label", "name", "scope", "type", "dangling"}


def _subnets(spec: dict[str, Any], path: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for i, cfg in enumerate((spec.get("IPAM") or {}).get("Config") or []):
        subnet = cfg.get("Subnet")
        if not subnet:
            continue
        try:
            out.append(ipaddress.ip_network(subnet, strict=True))
        except ValueError as exc:
            raise SpecError(f"invalid {path}.IPAM.Config[{i}].Subnet: {exc}") from None
        gateway = cfg.get("Gateway")
        if gateway:
            try:
                gw = ipaddress.ip_address(gateway)
            except ValueError as exc:
                raise SpecError(f"invalid {path}.IPAM.Config[{i}].Gateway: {exc}") from None
            if gw not in out[-1]:
                raise SpecError(f"invalid {path}.IPAM.Config[{i}].Gateway: {gateway} is not in {subnet}")
    return out


def _network_subnets(network: Network) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    ipam = network.ipam or network.spec.get("IPAM") or {}
    out = []
    for cfg in ipam.get("Config") or []:
        try:
            out.append(ipaddress.ip_network(cfg.get("Subnet", ""), strict=False))
        except ValueError:
            continue
    return out


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
        spec = _stored_spec(body)
        wanted = _subnets(spec, "NetworkCreate")

        def create(tx: WriteTx) -> str:
            if tx.find("networks", name=spec["Name"]):
                raise ApiError(409, f"network with name {spec['Name']} already exists")
            networks: list[Network] = tx.all("networks")
            if spec.get("Ingress") and any(n.spec.get("Ingress") for n in networks):
                raise SpecError("rpc error: code = AlreadyExists desc = ingress network already present")
            for other in networks:
                for mine in wanted:
                    for theirs in _network_subnets(other):
                        if mine.version == theirs.version and mine.overlaps(theirs):
                            raise SpecError(f"invalid NetworkCreate.IPAM.Config: subnet {mine} overlaps "
                                            f"with network {other.name} ({theirs})")
            network = Network(id=new_id(), spec=spec)
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
            users = _service_users(tx, network.id)
            if users:
                raise SpecError(f"rpc error: code = FailedPrecondition desc = network {network.id} is in use "
                                f"by service {users[0].id}")
            if network.spec.get("Ingress"):
                services: list[Service] = tx.all("services")
                for s in services:
                    ports = (s.spec.get("EndpointSpec") or {}).get("Ports") or []
                    if any(p.get("PublishMode", "ingress") == "ingress" for p in ports):
                        raise SpecError("rpc error: code = FailedPrecondition desc = ingress network cannot be "
                                        f"removed because service {s.id} depends on it")
            tasks: list[Task] = tx.all("tasks")
            for task in tasks:
                if task.desired_state <= TaskState.RUNNING and any(
                        (a.get("Network") or {}).get("ID") == network.id for a in task.networks_attachments):
                    raise SpecError(f"rpc error: code = FailedPrecondition desc = network {network.id} is in use "
                                    f"by task {task.id}")
            tx.delete("networks", network.id)

        await store.update(remove)
    return web.Response(status=204)


def add_routes(routes: Routes) -> None:
    routes.add("POST", "/networks/create", create_network)
    routes.add("GET", "/networks", list_networks)
    routes.add("GET", "/networks/{ref}", inspect_network)
    routes.add("DELETE", "/networks/{ref}", remove_network)
