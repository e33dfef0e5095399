"""How a manager's API opens a log stream: from the local broker on the leader, through the
leader's `logs.subscribe` on a follower.

Theory of operation: both kinds of stream offer the same two calls, `get(timeout)` (the next
batch of items; [] on timeout so the caller can check its own client; ChannelEnded at the end)
and `close()`. A remote stream owns one pump task that copies the leader's RPC stream into a
local channel; `close()` cancels it, which cancels the RPC stream and so the subscription on
the leader. `open()` waits for the leader's acknowledgement, so a refused subscription is an
error of `open()`, not of the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from aio import cancel_and_wait
from manager.logbroker.broker import LogBroker
from manager.logbroker.channel import LogChannel
from manager.logbroker.types import LogItem, LogOptions, LogSelector, LogWarning, item_from_wire
from rpc.client import RpcClient
from rpc.errors import NotLeaderError, RpcError, Unavailable

log = logging.getLogger("shoal.logbroker")

NO_LEADER = "rpc error: code = Unavailable desc = the swarm has no leader; logs cannot be read now"
OPEN_TIMEOUT = 10.0


class LogStream(Protocol):
    async def get(self, timeout: float | None = None) -> list[LogItem]: ...

    async def aclose(self) -> None:
        """Stop the stream and release what it holds; returns once it has."""
        ...


class Peers(Protocol):
    async def get(self, addr: str) -> RpcClient: ...


class LogRuntime(Protocol):
    """What of a manager's runtime opening logs needs (ManagerRuntime has it)."""

    @property
    def logbroker(self) -> LogBroker | None: ...

    @property
    def peers(self) -> Peers: ...

    def leader_addr(self) -> str: ...


class RemoteLogStream:
    def __init__(self, client: RpcClient, selector: LogSelector, options: LogOptions) -> None:
        self._client = client
        self._params = {"selector": selector.to_wire(), "options": options.to_wire()}
        self._channel = LogChannel()
        self._acknowledged: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pump: asyncio.Task[None] | None = None

    async def open(self) -> RemoteLogStream:
        self._pump = asyncio.create_task(self._copy(), name="log stream from leader")
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                await asyncio.shield(self._acknowledged)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _copy(self) -> None:
        try:
            async for item in self._client.stream("logs.subscribe", self._params):
                if "subscribed" in item:
                    if not self._acknowledged.done():
                        self._acknowledged.set_result(str(item["subscribed"]))
                    continue
                if not await self._channel.put([item_from_wire(doc) for doc in item.get("items") or []]):
                    return
        except RpcError as e:
            if not self._acknowledged.done():
                self._acknowledged.set_exception(e)
                return
            self._channel.put_unbounded([LogWarning(f"the log stream from the leader broke: {e.message}")])
        except (ValueError, TypeError) as e:
            self._channel.put_unbounded([LogWarning(f"bad item in the log stream from the leader: {e}")])
        finally:
            if not self._acknowledged.done():
                self._acknowledged.set_exception(Unavailable("the leader ended the log stream before it began"))
            self._channel.finish()

    async def get(self, timeout: float | None = None) -> list[LogItem]:
        return await self._channel.get(timeout)

    async def aclose(self) -> None:
        self._channel.close()
        await cancel_and_wait([self._pump])
        if self._acknowledged.done() and not self._acknowledged.cancelled():
            self._acknowledged.exception()   # retrieved: never "exception was never retrieved"


class ClusterLogs:
    """The API's log source: `open(selector, options)` on whatever manager answers the request."""

    def __init__(self, runtime: Callable[[], LogRuntime | None]) -> None:
        self._runtime = runtime

    async def open(self, selector: LogSelector, options: LogOptions) -> LogStream:
        runtime = self._runtime()
        if runtime is None:
            raise Unavailable("this node is not a swarm manager")
        broker = runtime.logbroker
        if broker is not None:
            return broker.subscribe(selector, options)
        addr = runtime.leader_addr()
        for _ in range(3):
            if not addr:
                raise Unavailable(NO_LEADER)
            try:
                client = await runtime.peers.get(addr)
                return await RemoteLogStream(client, selector, options).open()
            except NotLeaderError as e:
                addr = str(e.details.get("leader_addr") or "")
            except TimeoutError:
                raise Unavailable(f"the leader at {addr} did not answer the log request") from None
        raise Unavailable(NO_LEADER)

