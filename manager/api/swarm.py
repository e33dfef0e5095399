"""Engine API: `/swarm` inspect and update, and the unlock key, served from the manager's store.

Init, join and leave change what the node is, not the cluster state: node/swarm_api.py. So does
`/swarm/unlock` (it opens a locked node's data key): it is served here and drives the node's
`SwarmUnlock`. The unlock key is cluster state (`Cluster.unlock_key`, replicated to every manager,
which re-wraps its data key with it: node/autolock.py); it exists while autolock is on."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from ca import tokens
from ca.encryption import new_unlock_key
from engineapi.bodykeys import SWARM_SPEC, SWARM_UNLOCK
from engineapi.http import ApiError, Routes, go_bool, json_response, read_json
from manager.api.cluster import cluster_store, require_version, write
from manager.specs import SpecError, normalize_swarm_spec, validate_swarm_spec
from manager.store import StaleVersion, WriteTx
from manager.swarm.ca_rotation import apply_ca_request, parse_ca_request
from model import Cluster


class SwarmUnlock(Protocol):
    async def unlock(self, unlock_key: str) -> None:
        """Open this locked node's data key with `unlock_key` and start its swarm components."""
        ...


SWARM_UNLOCK_CONTROL = web.AppKey("swarm_unlock", SwarmUnlock)


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
        ca_request = parse_ca_request(spec)
    except SpecError as e:
        raise ApiError(400, str(e)) from None
    rotate_worker = go_bool(request, "rotateWorkerToken")
    rotate_manager = go_bool(request, "rotateManagerToken")
    rotate_unlock_key = go_bool(request, "rotateManagerUnlockKey")

    def fn(tx: WriteTx) -> None:
        cluster = _cluster(tx).copy()
        if cluster.version != version:
            raise StaleVersion("cluster")
        cluster.spec = normalize_swarm_spec(spec, base=cluster.spec) if spec else cluster.spec
        apply_ca_request(cluster, ca_request)     # root CA rotation (manager/swarm/ca_rotation.py)
        ca_der = _ca_der(cluster)
        if rotate_worker:
            cluster.join_tokens = {**cluster.join_tokens, "Worker": tokens.make_token(ca_der)}
        if rotate_manager:
            cluster.join_tokens = {**cluster.join_tokens, "Manager": tokens.make_token(ca_der)}
        if _autolock(cluster):
            if rotate_unlock_key or not cluster.unlock_key:
                cluster.unlock_key = new_unlock_key()
        else:
            cluster.unlock_key = ""
        tx.update(cluster)

    try:
        await write(store, fn)
    except StaleVersion:
        raise ApiError(500, "rpc error: code = Unknown desc = update out of sequence") from None
    return web.Response(status=200)


def _ca_der(cluster: Cluster) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = str(cluster.tls_info.get("TrustRoot", "")).encode()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _autolock(cluster: Cluster) -> bool:
    return bool((cluster.spec.get("EncryptionConfig") or {}).get("AutoLockManagers"))


async def unlock_key(request: web.Request) -> web.Response:
    cluster = cluster_store(request).view(_cluster)
    return json_response({"UnlockKey": cluster.unlock_key if _autolock(cluster) else ""})


async def unlock(request: web.Request) -> web.Response:
    body = await read_json(request, SWARM_UNLOCK)
    if not isinstance(body, dict) or not isinstance(body.get("UnlockKey", ""), str):
        raise ApiError(400, "invalid unlock request: UnlockKey must be a string")
    await request.app[SWARM_UNLOCK_CONTROL].unlock(body.get("UnlockKey", ""))
    return web.Response(status=200)


def add_routes(routes: Routes) -> None:
    routes.add("GET", "/swarm", inspect)
    routes.add("POST", "/swarm/update", update)
    routes.add("GET", "/swarm/unlockkey", unlock_key)
    routes.add("POST", "/swarm/unlock", unlock)
