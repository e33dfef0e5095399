"""The dispatcher's RPC methods on the cluster port, on every manager.

Only the leader has a dispatcher; a follower answers with NotLeaderError carrying the leader's
address, and the agent goes there. The caller's node ID comes from its certificate, never from
the request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from manager.dispatcher.attachments import attach_network, detach_network
from manager.dispatcher.dispatcher import Dispatcher
from rpc.errors import NotLeaderError
from rpc.server import Access, Peer, RpcServer


def register_dispatcher(server: RpcServer, current: Callable[[], Dispatcher | None],
                        leader_addr: Callable[[], str]) -> None:
    def dispatcher() -> Dispatcher:
        found = current()
        if found is None:
            raise NotLeaderError("this manager is not the leader", leader_addr=leader_addr())
        return found

    async def session(peer: Peer, params: dict[str, Any]) -> AsyncIterator[Any]:
        async for message in dispatcher().session(peer.node_id, params):
            yield message

    async def heartbeat(peer: Peer, params: dict[str, Any]) -> Any:
        return await dispatcher().heartbeat(peer.node_id, params)

    async def update_status(peer: Peer, params: dict[str, Any]) -> Any:
        return await dispatcher().update_status(peer.node_id, params)

    async def networks_applied(peer: Peer, params: dict[str, Any]) -> Any:
        return await dispatcher().networks_applied(peer.node_id, params)

    async def attach(peer: Peer, params: dict[str, Any]) -> Any:
        return await attach_network(dispatcher().store, peer.node_id, params)

    async def detach(peer: Peer, params: dict[str, Any]) -> Any:
        return await detach_network(dispatcher().store, peer.node_id, params)

    def unreachable(node_id: str) -> None:
        found = current()
        if found is not None:
            found.peer_unreachable(node_id)

    server.on_peer_unreachable(unreachable)
    server.register_stream("dispatcher.session", session, Access.NODE)
    server.register("dispatcher.heartbeat", heartbeat, Access.NODE)
    server.register("dispatcher.update_status", update_status, Access.NODE)
    server.register("dispatcher.networks_applied", networks_applied, Access.NODE)
    server.register("dispatcher.attach_network", attach, Access.NODE)     # standalone containers'
    server.register("dispatcher.detach_network", detach, Access.NODE)     # overlay attachments
