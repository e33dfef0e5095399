"""Role changes and certificate renewal, driven from what the cluster says about this node.

The agent's session reports this node's wanted role; the role loop is level-triggered on it:
- promoted (spec says manager, not yet in Raft): renew the certificate as a manager, start the
  server and a Raft node with no state, and ask the leader to add it (`raft.join`);
- demoted (spec says worker and the leader has taken it out of Raft): stop the manager parts,
  drop the Raft state and renew the certificate as a worker;
- a manager whose Raft join did not complete is joined again.
A failed attempt is retried until it succeeds or the wish changes.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import TYPE_CHECKING

from engineapi.http import ApiError
from node.joining import join_raft
from node.remote import renew_certificate
from node.state import LocalSwarmState, new_raft_id
from rpc.errors import RpcError

if TYPE_CHECKING:
    from node.swarm_node import SwarmNode

log = logging.getLogger("shoal.swarm")

RENEW_CHECK_INTERVAL = 60.0
ROLE_RETRY_INTERVAL = 1.0


def change_needed(node: SwarmNode) -> str | None:
    """"manager", "worker" or "raft" (join Raft again) when this node is not what the cluster
    wants; None when it is."""
    if node.state is None or node.wanted_role is None:
        return None
    role, member = node.wanted_role
    if role == "manager" and node.state.role == "worker":
        return "manager"
    if role == "worker" and node.state.role == "manager" and not member:
        return "worker"  # only once the leader has taken this node out of Raft
    if role == "manager" and node.state.role == "manager" and not member and node.runtime is not None:
        return "raft"
    return None


async def role_loop(node: SwarmNode) -> None:
    while True:
        await node.role_wakeup.wait()
        node.role_wakeup.clear()
        while (target := change_needed(node)) is not None:
            done = await (_retry_raft_join(node) if target == "raft" else _change_role(node, target))
            if done:
                node.wanted_role = None  # the new session will report afresh
                break
            await asyncio.sleep(ROLE_RETRY_INTERVAL)   # the CA or leader is not there yet: retry


async def _retry_raft_join(node: SwarmNode) -> bool:
    async with node.lock:
        if node.runtime is None or node.state is None or node.state.role != "manager":
            return True
        try:
            await join_raft(node)
            return True
        except ApiError as e:
            log.warning("joining Raft failed for now: %s", e.message)
            return False


async def _change_role(node: SwarmNode, role: str) -> bool:
    """Become `role`; True when done (or nothing is left to do)."""
    async with node.lock:
        state = node.state
        if state is None or state.role == role:
            return True
        log.info("role change", extra={"from": state.role, "to": role})
        try:
            await renew(node)
            if node.creds is None or node.creds.identity.role != role:
                return False  # the CA does not see the change yet
            await node.stop_components()
            shutil.rmtree(LocalSwarmState.raft_dir(node.data_dir), ignore_errors=True)
            state.raft_id = new_raft_id() if role == "manager" else 0
            state.role = role
            state.save(node.data_dir)
            await node.start_components(bootstrap=False)
            if role == "manager":
                await join_raft(node)
            return True
        except (RpcError, ApiError, OSError) as e:
            log.warning("role change to %s failed for now: %s", role, e)
            return False


async def renew(node: SwarmNode) -> None:
    state, creds = node.state, node.creds
    if state is None or creds is None:
        return
    renewed = await renew_certificate(state.managers or [state.advertise_addr], node.client_context(), creds)
    if renewed is None:
        return
    renewed.save(node.certs_dir)
    node.set_credentials(renewed)
    log.info("certificate renewed", extra={"role": renewed.identity.role})


async def renewal_loop(node: SwarmNode) -> None:
    """Renew the node certificate once half its lifetime has passed, well before expiry."""
    while True:
        creds = node.creds
        interval = 1.0 if creds is None else max(0.5, min(RENEW_CHECK_INTERVAL, creds.lifetime.total_seconds() / 10))
        await asyncio.sleep(interval)   # a clock, not a poll: certificates age with time
        if node.creds is not None and node.creds.renewal_due():
            async with node.lock:
                await renew(node)
