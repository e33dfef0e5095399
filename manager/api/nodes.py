"""Engine API: `/nodes` (list, inspect, update incl. promote/demote, remove).

Role changes only change the node's spec here; the leader's role reconciler carries them out
(Raft membership, certificates). The checks that protect the swarm happen in the same write
transaction: never demote the last manager, never leave a majority of managers unreachable.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engineapi.bodykeys import NODE_SPEC
from engineapi.filters import Filters, request_filters
from engineapi.http import ApiError, Routes, json_response, query_bool, read_json
from manager.api.cluster import CLUSTER, cluster_store, require_version, write
from manager.api.objects_common import labels_match
from manager.specs import SpecError, validate_node_spec
from manager.store import AmbiguousRef, NotFound, ReadTx, StaleVersion, WriteTx
from model import Node

FILTERS = {"id", "name", "label", "role", "membership", "node.label"}


def node_api(node: Node, leader_id: str) -> dict[str, Any]:
    out = node.to_api()
    status = out.get("ManagerStatus")
    if status is not None:
        status = {k: v for k, v in status.items() if k in ("Reachability", "Addr")}
        if node.id == leader_id:
            status["Leader"] = True
            status["Reachability"] = "reachable"
        out["ManagerStatus"] = status
    return out


def lookup(tx: ReadTx, ref: str) -> Node:
    try:
        node: Node = tx.lookup("nodes", ref)
    except NotFound:
        raise ApiError(404, f"node {ref} not found") from None
    except AmbiguousRef as e:
        raise ApiError(400, str(e)) from None
    return node


def _matches(node: Node, filters: Filters) -> bool:
    """A key with no values does not filter (dockerd hands swarmkit empty lists)."""
    if (ids := filters.get("id")) and not any(node.id.startswith(v) for v in ids):
        return False
    if (names := filters.get("name")) and not any(node.name.startswith(v) or node.hostname.startswith(v)
                                                  for v in names):
        return False
    if (roles := filters.get("role")) and node.role not in roles:
        return False
    if (memberships := filters.get("membership")) and "accepted" not in memberships:
        return False
    engine_labels = ((node.description.get("Engine") or {}).get("Labels")) or {}
    return labels_match(filters.get("label"), engine_labels) and \
        labels_match(filters.get("node.label"), node.spec.get("Labels"))


async def list_nodes(request: web.Request) -> web.Response:
    store = cluster_store(request)
    filters = request_filters(request, FILTERS)
    leader = request.app[CLUSTER].leader_node_id()
    nodes = store.view(lambda tx: [n for n in tx.all("nodes") if _matches(n, filters)])
    return json_response([node_api(n, leader) for n in nodes])


async def inspect(request: web.Request) -> web.Response:
    store = cluster_store(request)
    node = store.view(lambda tx: lookup(tx, request.match_info["ref"]))
    return json_response(node_api(node, request.app[CLUSTER].leader_node_id()))


def _reachable_managers(tx: ReadTx, leader_id: str) -> list[Node]:
    return [n for n in tx.all("nodes") if n.role == "manager" and (
        n.id == leader_id or (n.manager_status or {}).get("Reachability") == "reachable")]


async def update(request: web.Request) -> web.Response:
    store = cluster_store(request)
    version = require_version(request)
    spec = await read_json(request, NODE_SPEC)
    try:
        validate_node_spec(spec)
    except SpecError as e:
        raise ApiError(400, str(e)) from None
    leader = request.app[CLUSTER].leader_node_id()
    ref = request.match_info["ref"]

    def fn(tx: WriteTx) -> None:
        node = lookup(tx, ref).copy()
        if node.version != version:
            raise StaleVersion(f"node {node.id}")
        new_role = spec.get("Role") or node.role
        if node.role == "manager" and new_role == "worker":
            managers = [n for n in tx.all("nodes") if n.role == "manager"]
            if len(managers) <= 1:
                raise ApiError(400, "rpc error: code = FailedPrecondition desc = attempting to demote the "
                                    "last manager of the swarm")
            reachable = [n for n in _reachable_managers(tx, leader) if n.id != node.id]
            if len(reachable) <= (len(managers) - 1) // 2:
                raise ApiError(400, "rpc error: code = FailedPrecondition desc = can't remove member from the "
                                    "raft: this would result in a loss of quorum")
        node.spec = {"Labels": spec.get("Labels") or {}, "Role": new_role,
                     "Availability": spec.get("Availability") or node.availability,
                     **({"Name": spec["Name"]} if spec.get("Name") else {})}
        tx.update(node)

    try:
        await write(store, fn)
    except StaleVersion:
        raise ApiError(500, "rpc error: code = Unknown desc = update out of sequence") from None
    return web.Response(status=200)


async def remove(request: web.Request) -> web.Response:
    store = cluster_store(request)
    force = query_bool(request, "force")
    ref = request.match_info["ref"]

    def fn(tx: WriteTx) -> None:
        node = lookup(tx, ref)
        if node.role == "manager" or node.manager_status is not None:
            raise ApiError(400, f"rpc error: code = FailedPrecondition desc = node {node.id} is a cluster "
                                "manager and is a member of the raft cluster. It must be demoted to worker "
                                "before removal")
        if node.state != "down" and not force:
            raise ApiError(400, f"rpc error: code = FailedPrecondition desc = node {node.id} is not down and "
                                "can't be removed")
        tx.delete("nodes", node.id)

    await write(store, fn)
    return web.Response(status=200)


def add_routes(routes: Routes) -> None:
    routes.add("GET", "/nodes", list_nodes)
    routes.add("GET", "/nodes/{ref}", inspect)
    routes.add("POST", "/nodes/{ref}/update", update)
    routes.add("DELETE", "/nodes/{ref}", remove)
