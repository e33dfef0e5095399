"""Engine API: `/swarm` inspect and update, and the unlock key, served from the manager's store.

Init, join and leave change what the node is, not the cluster state: node/swarm_api.py."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ca import tokens
from engineapi.bodykeys import SWARM_SPEC
from engineapi.http import ApiError, Routes, go_bool, json_response, read_json
from manager.api.cluster import cluster_store, require_version
from manager.specs import SpecError, normalize_swarm_spec, validate_swarm_spec
from manager.store import StaleVersion, WriteTx
from model import Cluster


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
    spec = await read_json(request, SWARM_SPEC)
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
    routes.add("GET", "/swarm", inspect)
    routes.add("POST", "/swarm/update", update)
    routes.add("GET", "/swarm/unlockkey", unlock_key)
    routes.add("POST", "/swarm/unlock", unlock)
