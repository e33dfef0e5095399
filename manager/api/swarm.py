"""Engine API: `/swarm` (init, join, leave, inspect, update, unlock key)."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from manager.api.cluster import cluster_store, require_version
from manager.api.http import ApiError, Routes, go_bool, json_response, query_bool, read_json
from manager.ca import tokens
from manager.specs import SpecError, normalize_swarm_spec, validate_swarm_spec
from manager.store import StaleVersion, WriteTx
from model import Cluster

ALREADY_IN_SWARM = ('This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and '
                    "join another one.")
NOT_PART_OF_SWARM = "This node is not part of a swarm"
MANAGER_LEAVE = ("You are attempting to leave the swarm on a node that is participating as a manager. "
                 "Removing the last manager erases all current state of the swarm. Use `--force` to ignore "
                 "this message. ")


class SwarmControl(Protocol):
    async def init(self, request: dict[str, Any]) -> str:
        """Make this node the first manager of a new swarm; returns its node ID."""
        ...

    async def join(self, request: dict[str, Any]) -> None:
        ...

    async def leave(self, force: bool) -> None:
        ...


SWARM_CONTROL = web.AppKey("swarm_control", SwarmControl)


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, f"invalid {what} request: expected a JSON object")
    return body


async def init(request: web.Request) -> web.Response:
    body = _object(await read_json(request), "swarm init")
    if body.get("Spec") is not None:
        try:
            validate_swarm_spec(body["Spec"])
        except SpecError as e:
            raise ApiError(400, str(e)) from None
    node_id = await request.app[SWARM_CONTROL].init(body)
    return json_response(node_id)


async def join(request: web.Request) -> web.Response:
    body = _object(await read_json(request), "swarm join")
    if not body.get("JoinToken"):
        raise ApiError(400, "invalid join request: JoinToken is required")
    addrs = body.get("RemoteAddrs")
    if not isinstance(addrs, list) or not addrs or not all(isinstance(a, str) and a for a in addrs):
        raise ApiError(400, "invalid join request: RemoteAddrs must list at least one manager address")
    await request.app[SWARM_CONTROL].join(body)
    return web.Response(status=200)


async def leave(request: web.Request) -> web.Response:
    await request.app[SWARM_CONTROL].leave(query_bool(request, "force"))
    return web.Response(status=200)


def _cluster(tx: Any) -> Cluster:
    clusters = tx.all("clusters")
    if not clusters:
        raise ApiError(503, "the swarm has no cluster object yet; is it still initialising?")
    return clusters[0]


async def inspect(request: web.Request) -> web.Response:
    store = cluster_store(request)
    return json_response(store.view(_cluster).to_api())


async def update(request: web.Request) -> web.Response:
    store = cluster_store(request)
    version = require_version(request)
    spec = await read_json(request)
    try:
        validate_swarm_spec(spec)
    except SpecError as e:
        raise ApiError(400, str(e)) from None
    rotate_worker = go_bool(request, "rotateWorkerToken")
    rotate_manager = go_bool(request, "rotateManagerToken")

    def fn(tx: WriteTx) -> None:
        cluster = _cluster(tx).copy()
        if cluster.version != version:
            raise StaleVersion("cluster")
        cluster.spec = normalize_swarm_spec(spec, base=cluster.spec) if spec else cluster.spec
        ca_der = _ca_der(cluster)
        if rotate_worker:
            cluster.join_tokens = {**cluster.join_tokens, "Worker": tokens.make_token(ca_der)}
        if rotate_manager:
            cluster.join_tokens = {**cluster.join_tokens, "Manager": tokens.make_token(ca_der)}
        tx.update(cluster)

    try:
        await store.update(fn)
    except StaleVersion:
        raise ApiError(500, "rpc error: code = Unknown desc = update out of sequence") from None
    return web.Response(status=200)


def _ca_der(cluster: Cluster) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = str(cluster.tls_info.get("TrustRoot", "")).encode()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


async def unlock_key(request: web.Request) -> web.Response:
    cluster_store(request)
    return json_response({"UnlockKey": ""})


async def unlock(request: web.Request) -> web.Response:
    raise ApiError(409, "swarm is not locked")


def add_routes(routes: Routes) -> None:
    routes.add("POST", "/swarm/init", init)
    routes.add("POST", "/swarm/join", join)
    routes.add("POST", "/swarm/leave", leave)
    routes.add("GET", "/swarm", inspect)
    routes.add("POST", "/swarm/update", update)
    routes.add("GET", "/swarm/unlockkey", unlock_key)
    routes.add("POST", "/swarm/unlock", unlock)
