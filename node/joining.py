"""Joining and leaving a swarm: `swarm join` and `swarm leave [--force]`.

Both run under the node's lock. A join either completes (certificates issued, components
running, a manager added to Raft) or forgets everything it wrote. A manager that leaves first
hands leadership away and asks the leader to take it out of Raft, refusing (without --force)
when that would cost the swarm its quorum. Every leave is bounded: asking the leader takes at
most `LEAVE_RAFT_TIMEOUT` (then it is an error), or `FORCED_LEAVE_RAFT_TIMEOUT` with --force
(then the node leaves all the same, as Docker's does: the others see a manager gone); forgetting
the swarm (components, task containers, state) is bounded too (`SwarmNode.forget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from typing import TYPE_CHECKING, Any

from ca import tokens
from ca.authority import key_pem
from ca.node_tls import NodeCredentials
from engineapi.http import ApiError
from node.addresses import split_host_port
from node.bootstrap import addresses
from node.remote import pem_bytes, request_membership
from node.state import LocalSwarmState, new_raft_id
from node.swarm_api import ALREADY_IN_SWARM, MANAGER_LEAVE, NOT_PART_OF_SWARM
from rpc.client import RpcClient
from rpc.errors import NotLeaderError, RpcError

if TYPE_CHECKING:
    from node.swarm_node import SwarmNode

log = logging.getLogger("shoal.swarm")

JOIN_TIMEOUT = 15.0          # seconds to get into Raft as a manager
LEADERSHIP_HANDOFF = 5.0     # seconds a leaving leader waits for another manager to take over
RETRY_INTERVAL = 0.2         # seconds between attempts to reach a leader over the cluster port
LEAVE_RAFT_TIMEOUT = 30.0    # seconds a leaving manager tries to get out of Raft
FORCED_LEAVE_RAFT_TIMEOUT = 8.0   # the same with --force, which then leaves anyway


async def join(node: SwarmNode, request: dict[str, Any]) -> None:
    if node.state is not None:
        raise ApiError(503, ALREADY_IN_SWARM)
    try:
        token = tokens.parse_token(str(request["JoinToken"]))
    except tokens.TokenError as e:
        raise ApiError(400, str(e)) from None
    listen, advertise = addresses(node, request)
    errors = []
    for remote in request["RemoteAddrs"]:
        try:
            reply, key = await request_membership(
                str(remote), token, node.description(), str(request.get("Availability") or "active"))
            break
        except ApiError:
            raise
        except (RpcError, OSError, ssl.SSLError) as e:
            errors.append(f"{remote}: {e}")
    else:
        raise ApiError(503, "could not join the swarm: no manager could be reached (" + "; ".join(errors) + ")")
    dek = node.keys.create()      # the joiner's data key (in the clear: a manager re-wraps it if autolock is on)
    NodeCredentials(pem_bytes(reply["root"]), pem_bytes(reply["cert"]), key_pem(key),
                    key_password=dek.key_password).save(node.certs_dir)
    role = str(reply["role"])
    node.state = LocalSwarmState(node_id=str(reply["node_id"]), cluster_id=str(reply["cluster_id"]), role=role,
                                 advertise_addr=advertise, listen_addr=listen,
                                 managers=list(reply.get("managers") or request["RemoteAddrs"]),
                                 raft_id=new_raft_id() if role == "manager" else 0)
    node.state.save(node.data_dir)
    try:
        await node.start_components(bootstrap=False)
        if role == "manager":
            await join_raft(node)
    except BaseException:
        await node.forget()
        raise
    log.info("joined swarm", extra={"node": node.state.node_id, "role": role})


async def join_raft(node: SwarmNode) -> None:
    """Ask the leader to add this manager to Raft; follow redirects until it answers."""
    state, runtime = node.state, node.runtime
    assert state is not None and runtime is not None
    candidates = [m for m in state.managers if m != state.advertise_addr]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOIN_TIMEOUT
    last_error = "no manager known"
    while loop.time() < deadline:
        for addr in list(candidates):
            try:
                async with RpcClient(addr, node.client_context(), connect_timeout=3) as client:
                    # Learn the members' addresses first: the leader replicates to us before
                    # `raft.join` returns, and we must be able to answer it.
                    known = await client.call("raft.members", {}, timeout=5)
                    _learn_members(node, known["members"])
                    reply = await client.call("raft.join", {"raft_id": state.raft_id,
                                                            "addr": state.advertise_addr}, timeout=40)
                _learn_members(node, reply["members"])
                return
            except NotLeaderError as e:
                leader = str(e.details.get("leader_addr") or "")
                if leader and leader not in candidates:
                    candidates.insert(0, leader)
                last_error = f"{addr}: not the leader"
            except (RpcError, OSError, ssl.SSLError) as e:
                last_error = f"{addr}: {e}"
        await asyncio.sleep(RETRY_INTERVAL)   # every known manager refused: try them again shortly
    raise ApiError(503, f"could not join Raft as a manager: {last_error}")


def _learn_members(node: SwarmNode, members: dict[str, str]) -> None:
    state, runtime = node.state, node.runtime
    assert state is not None and runtime is not None
    for raft_id, member_addr in members.items():
        if int(raft_id) != state.raft_id:
            runtime.raft.update_address(int(raft_id), split_host_port(member_addr))


async def leave(node: SwarmNode, force: bool) -> None:
    state = node.state
    if state is None:
        raise ApiError(503, NOT_PART_OF_SWARM)
    if state.role == "manager" and node.runtime is not None:
        store = node.runtime.store
        managers = store.view(lambda tx: [n for n in tx.all("nodes") if n.manager_status])
        if len(managers) <= 1 and not force:
            raise ApiError(503, MANAGER_LEAVE)
        reachable = [n for n in managers if n.id != state.node_id and (
            n.manager_status or {}).get("Reachability") == "reachable"]
        remaining = len(managers) - 1
        if remaining and len(reachable) <= remaining // 2 and not force:
            raise ApiError(503, f"You are attempting to leave the swarm on a node that is participating "
                                f"as a manager. Removing this node leaves {len(reachable)} managers out of "
                                f"{remaining}. Without a Raft quorum your swarm will be inaccessible. Use "
                                "`--force` to suppress this message.")
        if len(managers) > 1:
            try:
                async with asyncio.timeout(FORCED_LEAVE_RAFT_TIMEOUT if force else LEAVE_RAFT_TIMEOUT):
                    await _leave_raft(node)
            except TimeoutError:
                if not force:
                    raise ApiError(503, "could not reach the leader to leave Raft; "
                                        "use --force to leave anyway") from None
                log.warning("left the swarm without leaving Raft: no leader answered within %.0fs",
                            FORCED_LEAVE_RAFT_TIMEOUT)
    await node.forget()


async def _leave_raft(node: SwarmNode) -> None:
    """Hand leadership away if need be, then ask the leader to take this manager out of Raft;
    retried until it answers (the caller bounds it)."""
    runtime = node.runtime
    assert runtime is not None
    raft = runtime.raft
    if raft.is_leader:
        others = [m for m in raft.members if m != raft.id]
        if others:
            raft.transfer_leadership(random.choice(others))
            with contextlib.suppress(TimeoutError):   # no taker: the leader is asked all the same
                await raft.wait_until(lambda: bool(raft.leader) and not raft.is_leader, timeout=LEADERSHIP_HANDOFF)
    while True:
        addr = runtime.leader_addr()
        if addr and not raft.is_leader:
            try:
                async with RpcClient(addr, node.client_context(), connect_timeout=3) as client:
                    await client.call("raft.leave", {}, timeout=10)
                return
            except RpcError as e:
                log.info("raft.leave: %s", e)
        await asyncio.sleep(RETRY_INTERVAL)   # no leader known yet, or it refused: ask again shortly
