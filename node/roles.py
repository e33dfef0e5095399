"""Role changes and certificate renewal, driven from what the cluster says about this node.

The agent's session reports this node's wanted role; the role loop is level-triggered on it:
- promoted (spec says manager, not yet in Raft): renew the certificate as a manager, start the
  server and a Raft node with no state, and ask the leader to add it (`raft.join`);
- demoted (spec says worker and the leader has taken it out of Raft): stop the manager parts,
  drop the Raft state and renew the certificate as a worker;
- a manager whose Raft join did not complete is joined again;
- a manager that Raft says was removed (demoted or left out of a forced new cluster while it was
  down or cut off; see manager/swarm/runtime.py) but that the cluster wants as a manager again
  joins as a new member, as a promotion does (new Raft ID, no Raft state): its old ID may be refused.
  One that the cluster wants as a worker is demoted as above.
- asked to renew its certificate (the node message's `certificate` is "rotate": a root CA
  rotation, manager/swarm/ca_rotation.py): renew; the new certificate and trust bundle take
  effect at once for new connections (the cluster port's listener, the Raft dialer and every
  client context), with no restart and no window in which RPCs fail.
A failed attempt is retried, after a growing delay, until it succeeds or the wish changes. Each
attempt is a `SwarmNode.background` transition: it runs under the node's lock, a leave cancels
it, and it either happens or leaves the node as it was (a promotion whose manager cannot start
goes back to being a worker; a demotion whose worker cannot start stays a manager).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import ssl
from dataclasses import replace
from typing import TYPE_CHECKING

from aio import Backoff
from ca.authority import CertificateError, bundle_digest, node_tls_info, root_key_trusted
from engineapi.http import ApiError
from node.joining import join_raft
from node.remote import renew_certificate
from node.state import LocalSwarmState, new_raft_id
from rpc.client import RpcClient
from rpc.errors import RpcError

if TYPE_CHECKING:
    from node.swarm_node import SwarmNode

log = logging.getLogger("shoal.swarm")

RENEW_CHECK_INTERVAL = 60.0
ROLE_RETRY_FIRST = 1.0         # seconds before a failed role change is tried again, doubling
ROLE_RETRY_CEILING = 30.0


def change_needed(node: SwarmNode) -> str | None:
    """"manager", "worker", "raft" (join Raft again) or "rejoin" (join Raft as a new member) when
    this node is not what the cluster wants; None when it is."""
    if node.state is None or node.wanted_role is None:
        return None
    role, member = node.wanted_role
    if role == "manager" and node.state.role == "worker":
        return "manager"
    if role == "worker" and node.state.role == "manager" and not member:
        return "worker"  # only once the leader has taken this node out of Raft
    if role == "manager" and node.state.role == "manager" and not member and node.runtime is not None:
        return "rejoin" if node.runtime.removed else "raft"
    return None


def certificate_needed(node: SwarmNode) -> str | None:
    """"certificate" while the cluster asks this node to rotate its certificate (root CA
    rotation): until the CA has heard from the node that it uses what was wanted."""
    if node.state is None or node.creds is None or node.wanted_certificate.get("State") != "rotate":
        return None
    return "certificate"


def _has_wanted_credentials(node: SwarmNode) -> bool:
    wish, creds = node.wanted_certificate, node.creds
    if creds is None:
        return False
    try:
        own = node_tls_info(creds.cert_pem, creds.root_pem)
    except CertificateError:
        return False
    return own["CertIssuerPublicKey"] == wish.get("Issuer") and bundle_digest(own["TrustRoot"]) == wish.get("Trust")


async def rotate_certificate(node: SwarmNode) -> bool:
    """Renew until the node holds the certificate and trust bundle the cluster wants, then tell
    the CA, over a connection made with them, which TLSInfo the node now uses (`ca.confirm`):
    the rotation counts a node as moved only then, so a renewal whose answer was lost can never
    let the rotation end without this node. True once confirmed."""
    if not _has_wanted_credentials(node):
        if not await renew(node) or not _has_wanted_credentials(node):
            return False     # no manager answered, or the one that did did not know the wish yet
    state, creds = node.state, node.creds
    assert state is not None and creds is not None
    info = node_tls_info(creds.cert_pem, creds.root_pem)
    for addr in state.managers or [state.advertise_addr]:
        try:
            async with RpcClient(addr, node.client_context(), connect_timeout=3) as client:
                await client.call("ca.confirm", {"tls_info": info}, timeout=10)
            return True
        except (RpcError, OSError, ssl.SSLError) as e:
            log.info("confirming the rotated certificate via %s failed: %s", addr, e)
    return False


async def role_loop(node: SwarmNode) -> None:
    backoff = Backoff(ROLE_RETRY_FIRST, ROLE_RETRY_CEILING)
    while True:
        await node.role_wakeup.wait()
        node.role_wakeup.clear()
        while (target := change_needed(node) or certificate_needed(node)) is not None:
            done = await node.background(functools.partial(_attempt, node, target))
            if done is None:
                break        # a leave cut it short: whatever the node is next reports afresh
            if done and target == "certificate":
                backoff.reset()
                break        # the CA's answer comes as the next node message (State "issued")
            if done:
                node.wanted_role = None  # the new session will report afresh
                backoff.reset()
                break
            await asyncio.sleep(backoff.next_delay())   # the CA or leader is not there yet: retry


async def _attempt(node: SwarmNode, target: str) -> bool:
    """One try at `target`, under the lock; True when done (or no longer wanted)."""
    if (change_needed(node) or certificate_needed(node)) != target:
        return True      # the wish changed, or another transition did it meanwhile
    if target == "certificate":
        try:
            return await rotate_certificate(node)
        except (RpcError, OSError, CertificateError) as e:
            log.warning("certificate renewal for the root CA rotation failed for now: %s", e)
            return False
    if target == "raft":
        return await _retry_raft_join(node)
    if target == "rejoin":
        return await _change_role(node, "manager", fresh=True)
    return await _change_role(node, target)


async def _retry_raft_join(node: SwarmNode) -> bool:
    if node.runtime is None or node.state is None or node.state.role != "manager":
        return True
    try:
        await join_raft(node)
        return True
    except ApiError as e:
        log.warning("joining Raft failed for now: %s", e.message)
        return False


async def _change_role(node: SwarmNode, role: str, fresh: bool = False) -> bool:
    """Become `role` (with `fresh`: a manager that becomes a new Raft member); True when done (or
    nothing is left to do), False to try again later, with the node as it was."""
    state = node.state
    if state is None or (state.role == role and not fresh):
        return True
    log.info("role change", extra={"from": state.role, "to": role, **({"new_raft_member": True} if fresh else {})})
    try:
        await renew(node)
    except (RpcError, ApiError, OSError) as e:
        log.warning("role change to %s failed for now: %s", role, e)
        return False
    if node.creds is None or node.creds.identity.role != role:
        return False  # the CA does not see the change yet
    before = replace(state)
    raft_dir = LocalSwarmState.raft_dir(node.data_dir)
    await node.stop_components()
    try:
        if role == "manager":
            shutil.rmtree(raft_dir, ignore_errors=True)   # a new member starts with no Raft state
        state.raft_id = new_raft_id() if role == "manager" else 0
        state.role = role
        state.save(node.data_dir)
        await node.start_components(bootstrap=False)
    except Exception as e:   # the node goes back to what it was, and tries again later
        log.warning("role change to %s failed for now: %s", role, e)
        await _restore(node, before)
        return False
    if role == "worker":
        shutil.rmtree(raft_dir, ignore_errors=True)       # out of Raft for good
        return True
    try:
        await join_raft(node)   # on failure the node is a manager outside Raft, joined again later
    except (RpcError, ApiError, OSError) as e:
        log.warning("joining Raft after a promotion failed for now: %s", e)
        return False
    return True


async def _restore(node: SwarmNode, before: LocalSwarmState) -> None:
    """Put the node back in the role it had before a role change that failed half way."""
    await node.stop_components()
    node.state = before
    before.save(node.data_dir)
    if before.role == "worker":
        shutil.rmtree(LocalSwarmState.raft_dir(node.data_dir), ignore_errors=True)
    try:
        await node.start_components(bootstrap=False)
    except Exception as e:
        node.record_failure(f"restarting as a {before.role}", e)
        await node.stop_components()


async def renew(node: SwarmNode) -> bool:
    """Ask a manager for a new certificate (and the trust bundle); True once it is in use."""
    state, creds = node.state, node.creds
    if state is None or creds is None:
        return False
    renewed = await renew_certificate(state.managers or [state.advertise_addr], node.client_context(), creds)
    if renewed is None:
        return False
    if renewed.root_key_pem is not None and not root_key_trusted(renewed.root_key_pem, renewed.root_pem):
        renewed = replace(renewed, root_key_pem=None)   # the key of a root rotated away leaves the disk
    renewed.save(node.certs_dir)
    node.set_credentials(renewed)
    use_new_credentials(node)
    log.info("certificate renewed", extra={"role": renewed.identity.role})
    return True


def use_new_credentials(node: SwarmNode) -> None:
    """New connections use the node's current certificate and trust bundle: the cluster port's
    listener (ca/live_tls.py) and the Raft dialer; the agent and the manager's peer clients ask
    `node.client_context()` for each connection already."""
    creds = node.creds
    if creds is None:
        return
    if node.server_tls is not None:
        node.server_tls.update(creds.server_context(node.certs_dir))
    if node.runtime is not None:
        node.runtime.raft.transport.client_ssl = node.client_context()


async def renewal_loop(node: SwarmNode) -> None:
    """Renew the node certificate once half its lifetime has passed, well before expiry."""
    while True:
        creds = node.creds
        interval = 1.0 if creds is None else max(0.5, min(RENEW_CHECK_INTERVAL, creds.lifetime.total_seconds() / 10))
        await asyncio.sleep(interval)   # a clock, not a poll: certificates age with time
        if node.creds is not None and node.creds.renewal_due():
            try:
                await node.background(functools.partial(renew, node))
            except (RpcError, OSError) as e:
                log.warning("certificate renewal failed for now: %s", e)
