"""Starting a swarm on this node: `swarm init`, and `swarm init --force-new-cluster`.

Both run under the node's lock. Init either completes (the node leads a one-manager swarm whose
cluster object and node object are committed) or leaves no trace: any failure forgets the
half-made state and is answered as an error.

Init creates the node's data key (node/autolock.py) before anything is written: the Raft log and
the private keys are encrypted from the first byte; with autolock the cluster gets its unlock key
and the data key is only ever stored wrapped by it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from ca import tokens
from ca.authority import NodeIdentity, RootCA, key_pem, make_csr, new_key
from ca.encryption import new_unlock_key
from ca.node_tls import NodeCredentials
from engineapi.http import ApiError
from manager.allocator import NetworkSettings, ingress_network, init_network_settings
from manager.specs import SpecError, default_swarm_spec, normalize_swarm_spec
from manager.store import Store, WriteTx
from manager.swarm.ca_service import cert_expiry
from manager.swarm.membership import refuse_old_managers
from manager.swarm.raft_glue import StoreStateMachine
from model import Cluster, Node, Reachability, new_id
from node.addresses import AddressError, choose_advertise, split_host_port
from node.state import LocalSwarmState, new_raft_id
from node.swarm_api import ALREADY_IN_SWARM
from raft.recovery import replay_log

if TYPE_CHECKING:
    from node.swarm_node import SwarmNode

log = logging.getLogger("shoal.swarm")


def addresses(node: SwarmNode, request: dict[str, Any]) -> tuple[str, str]:
    """(listen, advertise) for an init or join request, with the daemon's defaults."""
    try:
        listen_host, listen_port = split_host_port(str(request.get("ListenAddr") or node.default_listen))
        advertise = choose_advertise(str(request.get("AdvertiseAddr") or ""), node.default_advertise,
                                     f"{listen_host}:{listen_port}")
    except AddressError as e:
        raise ApiError(400, str(e)) from None
    return f"{listen_host}:{listen_port}", advertise


async def init(node: SwarmNode, request: dict[str, Any]) -> str:
    if node.state is not None:
        raise ApiError(503, ALREADY_IN_SWARM)
    try:
        network_settings = init_network_settings(request)
    except SpecError as e:
        raise ApiError(400, str(e)) from None
    listen, advertise = addresses(node, request)
    node_id, cluster_id = new_id(), new_id()
    ca = RootCA.create(cluster_id)
    spec = normalize_swarm_spec(request.get("Spec"), base=default_swarm_spec())
    # dockerd takes the request's AutoLockManagers; docker-py sets it in the spec only.
    autolock = request.get("AutoLockManagers") is True or bool(spec["EncryptionConfig"].get("AutoLockManagers"))
    spec["EncryptionConfig"] = {**spec["EncryptionConfig"], "AutoLockManagers": autolock}
    key = new_key()
    cluster = Cluster(id=cluster_id, spec=spec, unlock_key=new_unlock_key() if autolock else "")
    cert = ca.issue(make_csr(key), NodeIdentity(node_id, "manager", cluster_id), expiry=cert_expiry(cluster))
    dek = node.keys.create(cluster.unlock_key)
    NodeCredentials(ca.cert_pem, cert, key_pem(key), key_pem(ca.key) if ca.key else None,
                    key_password=dek.key_password).save(node.certs_dir)
    node.state = LocalSwarmState(node_id=node_id, cluster_id=cluster_id, role="manager", advertise_addr=advertise,
                                 listen_addr=listen, managers=[advertise], raft_id=new_raft_id())
    try:
        await _first_manager(node, ca, cluster, network_settings, request)
    except BaseException:
        await node.forget()
        raise
    log.info("swarm initialised", extra={"node": node_id, "advertise": advertise})
    return node_id


async def _first_manager(node: SwarmNode, ca: RootCA, cluster: Cluster, network_settings: NetworkSettings,
                         request: dict[str, Any]) -> None:
    state = node.state
    assert state is not None
    state.save(node.data_dir)
    node.set_credentials(node.load_credentials())
    await node.start_manager(bootstrap=True, members={})
    runtime = await node.until_leader("the first manager to become leader")
    ca_der = ca.cert.public_bytes(serialization.Encoding.DER)
    cluster.join_tokens = {"Worker": tokens.make_token(ca_der), "Manager": tokens.make_token(ca_der)}
    cluster.tls_info = ca.tls_info()
    cluster.root_ca = {"Cert": ca.cert_pem.decode(), "Key": key_pem(ca.key).decode() if ca.key else "",
                       # the spec's ForceRotate at init is no request to rotate (ca_rotation.py)
                       "LastForcedRotation": int((cluster.spec.get("CAConfig") or {}).get("ForceRotate") or 0)}
    network_settings.apply(cluster)
    availability = request.get("Availability") or "active"
    me = Node(id=state.node_id, spec={"Labels": {}, "Role": "manager", "Availability": availability},
              description=node.session_description(),   # as its session reports it: no second write
              status={"State": "ready", "Message": "", "Addr": split_host_port(state.advertise_addr)[0]},
              manager_status={"RaftID": state.raft_id, "Addr": state.advertise_addr, "Reachability": "reachable"})

    def seed(tx: WriteTx) -> None:
        tx.create(cluster)
        tx.create(me)
        tx.create(ingress_network())   # the allocator gives it the first subnet and VXLAN id 4096

    await runtime.store.update(seed)
    node.start_agent()


async def force_new_cluster(node: SwarmNode) -> str:
    """Recover a manager that lost quorum: keep the state it has committed and make it the only
    manager of a new Raft cluster. The old Raft data is kept aside, never deleted; the other
    managers become workers (they may be promoted again). A failure puts the node back as it was
    (its Raft data and manager list, its components running) and is the caller's error."""
    state = node.state
    if state is None or state.role != "manager":
        raise ApiError(400, "--force-new-cluster needs this node to be a manager of an existing swarm")
    raft_dir = LocalSwarmState.raft_dir(node.data_dir)
    managers = list(state.managers)
    aside: Path | None = None
    await node.stop_components()
    try:
        recovered = Store()
        await asyncio.to_thread(replay_log, str(raft_dir), StoreStateMachine(recovered), node.keys.dek)
        snapshot = recovered.snapshot()
        aside = _aside_name(raft_dir)
        raft_dir.rename(aside)
        refused = await asyncio.to_thread(refuse_old_managers, raft_dir, recovered, state.node_id)
        log.info("the new cluster refuses the other managers of the old one", extra={"raft_ids": sorted(refused)})
        state.managers = [state.advertise_addr]
        state.save(node.data_dir)
        node.set_credentials(node.load_credentials())
        await node.start_manager(bootstrap=True, members={})
        runtime = await node.until_leader("the recovered manager to become leader")
        await runtime.store.reset(snapshot)

        def sole_manager(tx: WriteTx) -> None:
            for other in tx.all("nodes"):
                if other.id == state.node_id:
                    other = other.copy()
                    other.set_manager_status(state.raft_id, state.advertise_addr, Reachability.REACHABLE)
                    tx.update(other)
                elif other.manager_status is not None or other.role == "manager":
                    other = other.copy()
                    other.manager_status = None
                    other.spec = {**other.spec, "Role": "worker"}
                    tx.update(other)

        await runtime.store.update(sole_manager)
        node.start_agent()
    except BaseException:
        await _undo_force_new_cluster(node, raft_dir, aside, managers)
        raise
    log.info("forced a new cluster", extra={"node": state.node_id})
    return state.node_id


def _aside_name(raft_dir: Path) -> Path:
    """A new name for the Raft data a --force-new-cluster keeps aside: two forced in one second
    must not collide (a rename onto the first one's directory fails "Directory not empty")."""
    stamp = int(time.time())
    aside = raft_dir.with_name(f"raft.before-force-new-cluster.{stamp}")
    n = 1
    while aside.exists():
        aside = raft_dir.with_name(f"raft.before-force-new-cluster.{stamp}.{n}")
        n += 1
    return aside


async def _undo_force_new_cluster(node: SwarmNode, raft_dir: Path, aside: Path | None, managers: list[str]) -> None:
    """Put a manager back as it was before a --force-new-cluster that failed half way."""
    state = node.state
    assert state is not None
    await node.stop_components()
    if aside is not None:
        shutil.rmtree(raft_dir, ignore_errors=True)   # the new cluster's beginnings
        os.rename(aside, raft_dir)
    state.managers = managers
    state.save(node.data_dir)
    try:
        await node.start_components(bootstrap=False)
    except Exception as e:
        node.record_failure("restarting the manager after a failed --force-new-cluster", e)
        await node.stop_components()
