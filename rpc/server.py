"""The cluster port's server side.

Theory of operation: each accepted TLS connection is owned by the server (tracked and cancelled
on shutdown). The peer's identity comes from its verified certificate; a peer without one is
anonymous and may only call methods registered as ANONYMOUS (joining). The first frame names
the channel. On the `rpc` channel every request runs as its own task in the connection's
TaskGroup, so a slow call never blocks the others; replies share one write lock. A streaming
method is an async generator whose items go out as they come; the caller may cancel it.
Connections probe their peer with TCP keepalive (`liveness`); a node cut for not answering is
reported to `on_peer_unreachable` listeners (the dispatcher marks it down at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aio import cancel_and_wait
from model.identity import NodeIdentity
from rpc import frames
from rpc.errors import InvalidArgument, PermissionDenied, RpcError
from rpc.liveness import is_unreachable, set_keepalive

log = logging.getLogger("shoal.rpc")


class Access(enum.Enum):
    ANONYMOUS = "anonymous"     # anyone who completes the TLS handshake
    NODE = "node"               # any node of this swarm (worker or manager certificate)
    MANAGER = "manager"         # managers only


@dataclass(frozen=True)
class Peer:
    identity: NodeIdentity | None
    address: str

    @property
    def node_id(self) -> str:
        return self.identity.node_id if self.identity else ""


Unary = Callable[[Peer, dict[str, Any]], Awaitable[Any]]
Streaming = Callable[[Peer, dict[str, Any]], AsyncIterator[Any]]
# The verified peer's identity from its TLS connection (None: no certificate); ValueError refuses it.
PeerIdentifier = Callable[[ssl.SSLObject | None], NodeIdentity | None]
ChannelHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Peer], Awaitable[None]]


@dataclass(frozen=True)
class _Method:
    fn: Callable[..., Any]
    access: Access
    stream: bool


def _allowed(access: Access, peer: Peer) -> bool:
    if access is Access.ANONYMOUS:
        return True
    if peer.identity is None:
        return False
    return access is Access.NODE or peer.identity.role == "manager"


class RpcServer:
    def __init__(self, ssl_context: ssl.SSLContext, identify: PeerIdentifier) -> None:
        self._ssl = ssl_context
        self._identify = identify
        self._methods: dict[str, _Method] = {}
        self._channels: dict[str, tuple[ChannelHandler, Access]] = {}
        self._unreachable_listeners: list[Callable[[str], None]] = []
        self._connections: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.bound: tuple[str, int] | None = None
        self._listener: asyncio.Server | None = None

    def register(self, name: str, fn: Unary, access: Access = Access.NODE) -> None:
        self._methods[name] = _Method(fn, access, stream=False)

    def register_stream(self, name: str, fn: Streaming, access: Access = Access.NODE) -> None:
        self._methods[name] = _Method(fn, access, stream=True)

    def unregister_prefix(self, prefix: str) -> None:
        for name in [n for n in self._methods if n.startswith(prefix)]:
            del self._methods[name]

    def register_channel(self, name: str, handler: ChannelHandler, access: Access) -> None:
        self._channels[name] = (handler, access)

    def on_peer_unreachable(self, listener: Callable[[str], None]) -> None:
        """Call `listener(node_id)` when a node's connection is cut because the node stopped
        answering keepalive probes (it is gone or cut off; see `liveness`), before the
        connection's calls and streams are cancelled."""
        self._unreachable_listeners.append(listener)

    def _notify_unreachable(self, node_id: str) -> None:
        log.warning("peer unreachable: keepalive probes unanswered", extra={"node": node_id})
        for listener in self._unreachable_listeners:
            try:
                listener(node_id)
            except Exception:
                log.exception("peer-unreachable listener failed")

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Bind the cluster port (an OSError such as "address already in use" is raised here, to
        the caller, before anything runs); `serve()` then accepts connections."""
        self._listener = await asyncio.start_server(self._accept, host, port, ssl=self._ssl,
                                                    ssl_handshake_timeout=10)
        sock = self._listener.sockets[0].getsockname()
        self.bound = (sock[0], sock[1])
        log.info("cluster port listening", extra={"addr": f"{sock[0]}:{sock[1]}"})
        return self.bound

    async def serve(self, host: str = "", port: int = 0, ready: asyncio.Future[tuple[str, int]] | None = None) -> None:
        """Serve until cancelled (binding first unless `listen()` did); then close the listener
        and every connection."""
        if self._listener is None:
            await self.listen(host, port)
        server = self._listener
        assert server is not None and self.bound is not None
        if ready is not None and not ready.done():
            ready.set_result(self.bound)
        try:
            await asyncio.Future()
        finally:
            self._closing = True
            server.close()
            await cancel_and_wait(list(self._connections))
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Each connection runs as a task the server owns (cancelled and awaited by `serve()`), not
        as asyncio's own client_connected_cb task, which reports a normal cancellation as an error."""
        if self._closing:
            writer.close()
            return
        task = asyncio.create_task(self._on_connection(reader, writer), name="rpc-connection")
        self._connections.add(task)
        task.add_done_callback(self._connection_done)

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("connection handler failed", exc_info=error)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        set_keepalive(writer.get_extra_info("socket"))
        try:
            try:
                identity = self._identify(writer.get_extra_info("ssl_object"))
            except ValueError as e:
                log.warning("refusing peer with a bad certificate", extra={"peer": str(addr), "error": str(e)})
                return
            peer = Peer(identity, f"{addr[0]}:{addr[1]}" if addr else "")
            async with asyncio.timeout(10):
                hello = await frames.read_frame(reader)
            channel = hello.get("channel") if isinstance(hello, dict) else None
            if channel == "rpc":
                await self._serve_rpc(reader, writer, peer)
            elif channel in self._channels:
                handler, access = self._channels[channel]
                if not _allowed(access, peer):
                    log.warning("channel refused", extra={"channel": channel, "peer": peer.address})
                    return
                await handler(reader, writer, peer)
        except (EOFError, frames.FrameError, ConnectionError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _serve_rpc(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        lock = asyncio.Lock()
        calls: dict[int, asyncio.Task[Any]] = {}

        async def send(frame: dict[str, Any]) -> None:
            async with lock:
                writer.write(frames.encode(frame))
                await writer.drain()

        async with asyncio.TaskGroup() as group:
            try:
                while True:
                    try:
                        frame = await frames.read_frame(reader)
                    except (EOFError, frames.FrameError, ConnectionError, ssl.SSLError):
                        return
                    except OSError as e:
                        if is_unreachable(e) and peer.node_id:
                            self._notify_unreachable(peer.node_id)
                        return
                    kind, call_id = frame.get("t"), int(frame.get("id", 0))
                    if kind == "cancel":
                        if call_id in calls:
                            calls[call_id].cancel()
                        continue
                    if kind != "req":
                        continue
                    calls[call_id] = group.create_task(
                        self._run_call(call_id, str(frame.get("m")), frame.get("p") or {}, peer, send, calls))
            finally:
                for task in calls.values():
                    task.cancel()

    async def _run_call(self, call_id: int, name: str, params: dict[str, Any], peer: Peer,
                        send: Callable[[dict[str, Any]], Awaitable[None]],
                        calls: dict[int, asyncio.Task[Any]]) -> None:
        try:
            method = self._methods.get(name)
            if method is None:
                raise InvalidArgument(f"unknown method {name!r}")
            if not _allowed(method.access, peer):
                raise PermissionDenied(f"{name}: permission denied for this node's role")
            if method.stream:
                async for item in method.fn(peer, params):
                    await send({"t": "item", "id": call_id, "r": item})
                await send({"t": "end", "id": call_id})
            else:
                result = await method.fn(peer, params)
                await send({"t": "res", "id": call_id, "r": result})
        except asyncio.CancelledError:
            raise
        except RpcError as e:
            await _send_quietly(send, {"t": "err", "id": call_id, "e": e.to_wire()})
        except Exception as e:
            log.exception("rpc %s failed", name)
            await _send_quietly(send, {"t": "err", "id": call_id, "e": RpcError(f"{name}: {e}").to_wire()})
        finally:
            calls.pop(call_id, None)


async def _send_quietly(send: Callable[[dict[str, Any]], Awaitable[None]], frame: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await send(frame)
