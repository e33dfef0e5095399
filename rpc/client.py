"""The cluster port's client side: one multiplexed connection to one peer.

Theory of operation: `connect()` opens the TLS stream, sends the `rpc` hello and starts one
reader task, owned by the client and cancelled by `close()`. Calls and streams are told apart by
id; the reader routes each reply to its waiter. When the connection drops, every pending call
and stream fails with `Unavailable`, and the client is closed: callers reconnect with a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import AsyncIterator
from typing import Any

from rpc import frames
from rpc.errors import RpcError, Unavailable, from_wire
from rpc.liveness import set_keepalive

_END = object()


def split_addr(addr: str, default_port: int = 2377) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, default_port
    if not port.isdigit():
        raise ValueError(f"invalid address {addr!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


class RpcClient:
    def __init__(self, addr: str, ssl_context: ssl.SSLContext, *, connect_timeout: float = 5.0) -> None:
        self.addr = addr
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[Any]] = {}
        self._lock = asyncio.Lock()
        self._closed = False
        self.peer_cert_der: bytes | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._closed

    async def connect(self) -> RpcClient:
        host, port = split_addr(self.addr)
        try:
            async with asyncio.timeout(self._connect_timeout):   # not wait_for: it can drop a cancel (3.11)
                reader, writer = await asyncio.open_connection(host, port, ssl=self._ssl,
                                                               server_hostname=host or None)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise Unavailable(f"cannot reach {self.addr}: {e or type(e).__name__}") from None
        set_keepalive(writer.get_extra_info("socket"))   # a dead manager is noticed in seconds
        ssl_object = writer.get_extra_info("ssl_object")
        self.peer_cert_der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        writer.write(frames.encode({"channel": "rpc"}))
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_loop(reader), name=f"rpc-reader {self.addr}")
        return self

    async def __aenter__(self) -> RpcClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._reader_task is not None:
            self._reader_task.cancel()
            # gather: the reader's own cancellation is a result, while a cancellation of *this*
            # task still propagates (suppressing CancelledError here would swallow it).
            await asyncio.gather(self._reader_task, return_exceptions=True)
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await self._writer.wait_closed()
            self._writer = None
        self._fail_all(Unavailable(f"connection to {self.addr} closed"))

    def _fail_all(self, error: RpcError) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(error)
        self._waiters.clear()
        for queue in self._streams.values():
            queue.put_nowait(error)
        self._streams.clear()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        error: RpcError = Unavailable(f"connection to {self.addr} lost")
        try:
            while True:
                frame = await frames.read_frame(reader)
                kind, call_id = frame.get("t"), frame.get("id")
                if kind == "res":
                    fut = self._waiters.pop(call_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(frame.get("r"))
                elif kind == "err":
                    err = from_wire(frame.get("e") or {})
                    fut = self._waiters.pop(call_id, None)
                    if fut is not None and not fut.done():
                        fut.set_exception(err)
                    queue = self._streams.pop(call_id, None)
                    if queue is not None:
                        queue.put_nowait(err)
                elif kind == "item":
                    if call_id in self._streams:
                        self._streams[call_id].put_nowait(frame.get("r"))
                elif kind == "end":
                    queue = self._streams.pop(call_id, None)
                    if queue is not None:
                        queue.put_nowait(_END)
        except (EOFError, frames.FrameError, ConnectionError, ssl.SSLError, OSError) as e:
            error = Unavailable(f"connection to {self.addr} lost: {e or type(e).__name__}")
        finally:
            self._closed = True
            self._fail_all(error)

    async def _send(self, frame: dict[str, Any]) -> None:
        if self._writer is None or self._closed:
            raise Unavailable(f"not connected to {self.addr}")
        async with self._lock:
            try:
                self._writer.write(frames.encode(frame))
                await self._writer.drain()
            except (ConnectionError, RuntimeError) as e:
                raise Unavailable(f"connection to {self.addr} lost: {e}") from None

    async def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = 30.0) -> Any:
        call_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[call_id] = fut
        try:
            await self._send({"t": "req", "id": call_id, "m": method, "p": params or {}})
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise Unavailable(f"{method} on {self.addr} timed out after {timeout}s") from None
        finally:
            self._waiters.pop(call_id, None)

    async def stream(self, method: str, params: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        """Items of a server stream; leaving the loop early cancels it on the server."""
        call_id = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[call_id] = queue
        finished = False
        try:
            await self._send({"t": "req", "id": call_id, "m": method, "p": params or {}})
            while True:
                item = await queue.get()
                if item is _END:
                    finished = True
                    return
                if isinstance(item, RpcError):
                    finished = True
                    raise item
                yield item
        finally:
            self._streams.pop(call_id, None)
            if not finished and self.connected:
                with contextlib.suppress(RpcError):
                    await self._send({"t": "cancel", "id": call_id})
