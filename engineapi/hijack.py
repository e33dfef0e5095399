"""Hijacked connections: the HTTP upgrade to a raw two-way byte stream that exec and attach use.

Theory of operation: a client of `POST /exec/{id}/start` (the docker CLI, docker-py) sends
`Connection: Upgrade` and `Upgrade: tcp`; dockerd answers `101 UPGRADED` and from then on the
connection is a raw byte stream: the client's stdin in, the process's output out (framed or
not, the handler's business), until the server closes it. A client that does not ask for the
upgrade gets `200 OK` and the output as an ordinary streamed body, without input.

aiohttp's C parser only upgrades to websocket, so the stream is taken over at the transport:
the transport's protocol is swapped for a `RawStream` *before* the response head is written (so
nothing the client sends after reading it can reach aiohttp's parser). `RawStream` keeps what
arrives in a bounded buffer (pausing the transport while it is full), reads the client's
half-close as the end of input while output may still go out, and hands the connection loss
on to aiohttp's own protocol, which then ends the request as it does for any client that went
away. The handler owns the stream until it returns the response `hijack` gave it; `close()`
ends the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

READ_LIMIT = 256 * 1024        # bytes held from the client before its transport is paused


def wants_upgrade(request: web.Request) -> bool:
    connection = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return "upgrade" in connection and request.headers.get("Upgrade", "").strip().lower() == "tcp"


class RawStream(asyncio.Protocol):
    """The connection after the upgrade: `read`, `write`, `close`, and `closed` once it is gone."""

    def __init__(self, transport: asyncio.Transport, inner: asyncio.BaseProtocol) -> None:
        self._transport = transport
        self._inner = inner
        self._buffer = bytearray()
        self._eof = False
        self._wakeup: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = asyncio.Event()

    # ---- asyncio.Protocol -----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= READ_LIMIT and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True                  # keep the connection open for the output

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._writable.set()
        self.closed.set()
        self._wake()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # ---- the handler's side ---------------------------------------------------------------
    async def read(self, limit: int = 65536) -> bytes:
        """What the client sent next; b"" once it closed its side (or the connection)."""
        while not self._buffer and not self._eof:
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        data = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        if self._reading_paused and len(self._buffer) < READ_LIMIT // 2 and not self.closed.is_set():
            self._reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        """Send to the client (waiting while the transport's buffer is full); dropped once the
        connection is gone."""
        if self.closed.is_set() or self._transport.is_closing():
            return
        self._transport.write(data)
        await self._writable.wait()

    def close(self) -> None:
        self._transport.close()


async def hijack(request: web.Request, content_type: str) -> tuple[web.StreamResponse, RawStream | None]:
    """Answer the request with the head of a raw stream. With the upgrade: `101 UPGRADED` and
    the connection as a `RawStream`; without: `200 OK`, streamed, and None (write the output to
    the response). Return the response from the handler once done."""
    headers = {"Content-Type": content_type}
    if not wants_upgrade(request):
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        return resp, None
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client went away")
    resp = web.StreamResponse(status=101, reason="UPGRADED",
                              headers={**headers, "Connection": "Upgrade", "Upgrade": "tcp"})
    inner: Any = transport.get_protocol()
    stream = RawStream(transport, inner)
    transport.set_protocol(stream)       # before the head goes out: what follows it is ours
    await resp.prepare(request)
    await resp.write_eof()               # a 101 has no body
    return resp, stream
