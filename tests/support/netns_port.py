"""A port on this namespace's loopback that forwards to a port on a lab host's loopback.

The dashboard and the metrics endpoint bind 127.0.0.1 by default, and a lab host's loopback is
its own network namespace's. A browser (or a scraper) in the test's namespace reaches them
through this forwarder: its listening socket is made here, then its thread enters the lab
host's namespace (setns applies to the calling thread only), so every upstream connection it
opens is made there. Sockets keep the namespace they were made in. The thread's event loop owns
every connection; leaving the context stops it and joins the thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading
from types import TracebackType

CLONE_NEWNET = 0x40000000
STOP_TIMEOUT = 5.0


def _enter_netns(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {ns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class NamespacePort:
    def __init__(self, ns: str, port: int) -> None:
        self.ns = ns
        self.target = port
        self.port = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"netns-port-{ns}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> NamespacePort:
        self._thread.start()
        if not self._ready.wait(STOP_TIMEOUT) or self._error is not None:
            raise RuntimeError(f"port forwarder into {self.ns} did not start: {self._error!r}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_TIMEOUT)

    def _run(self) -> None:
        try:
            _enter_netns(self.ns)
            asyncio.run(self._serve())
        except BaseException as e:
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
                async with asyncio.TaskGroup() as group:
                    group.create_task(_pump(reader, up_writer))
                    group.create_task(_pump(up_reader, writer))
            except OSError:
                writer.close()
            finally:
                connections.discard(task)

        server = await asyncio.start_server(forward, sock=self._listener)
        self._ready.set()
        async with server:
            await self._stop.wait()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
