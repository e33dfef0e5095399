"""The log broker's RPC methods on the cluster port, on every manager.

- `logs.publish` (any node, unary): an agent's batch of lines for one task of a subscription;
  the answer says whether the subscription was cancelled. The node ID comes from the caller's
  certificate, so a node can only publish for tasks the broker asked it for.
- `logs.subscribe` (managers, stream): how a follower's API reads logs through the leader's
  broker. The first item acknowledges the subscription (so errors reach the caller before it
  answers its own client); then each item carries a batch of records and warnings. Leaving the
  stream (the caller cancels it) closes the subscription.
Only the leader has a broker; a follower answers with NotLeaderError and the leader's address.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from manager.logbroker.broker import LogBroker
from manager.logbroker.channel import ChannelEnded
from manager.logbroker.types import LogOptions, LogSelector
from rpc.errors import InvalidArgument, NotLeaderError
from rpc.server import Access, Peer, RpcServer


def register_logs(server: RpcServer, current: Callable[[], LogBroker | None],
                  leader_addr: Callable[[], str]) -> None:
    def broker() -> LogBroker:
        found = current()
        if found is None:
            raise NotLeaderError("this manager is not the leader", leader_addr=leader_addr())
        return found

    async def publish(peer: Peer, params: dict[str, Any]) -> Any:
        return await broker().publish(peer.node_id, params)

    async def subscribe(peer: Peer, params: dict[str, Any]) -> AsyncIterator[Any]:
        try:
            selector = LogSelector.from_wire(params.get("selector"))
            options = LogOptions.from_wire(params.get("options"))
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        subscription = broker().subscribe(selector, options)
        try:
            yield {"subscribed": subscription.id}
            while True:
                try:
                    batch = await subscription.get()
                except ChannelEnded:
                    return
                yield {"items": [item.to_wire() for item in batch]}
        finally:
            subscription.close()

    server.register("logs.publish", publish, Access.NODE)
    server.register_stream("logs.subscribe", subscribe, Access.MANAGER)
