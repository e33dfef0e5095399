"""Attaching to a container's stdio through its shim: `docker run`'s and `docker attach`'s stream,
and the resize of its terminal.

Theory of operation: conmon holds the container's stdio (pipes, or the master of its pty) and
serves an attach socket, `<socket-dir>/<cid>/attach` (a symlink to the bundle dir, to keep the
path short), of type SOCK_SEQPACKET: every packet it sends carries one read of the container's
output, prefixed with one byte naming the pipe (2 stdout, 3 stderr; a TTY's output is all
stdout); what a client sends goes to the container's stdin (with `--stdin`), and a client's
half-close closes that stdin. conmon sends output only to the clients connected when it is
read, so `docker run` attaches before it starts the container, and the stream ends when conmon
closes the socket, which it does on exiting after the container did and its output was drained.
The socket is connected through `/proc/self/fd/<dir fd>/attach`, so no path length limit bites.
`relay` pumps both ways between that socket and the hijacked client connection (engineapi.hijack):
the output raw for a TTY, in multiplexed frames otherwise; it returns once the output ended, the
client went away or typed the detach keys (a TTY's input only, as dockerd scans it: the keys are
held back from the container, which runs on), and owns (and cancels) its two pumps.
A resize is one line, `1 <height> <width>`, written to the shim's control fifo `<bundle>/ctl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engineapi.logframes import STDERR, STDOUT, frame
from worker.executor.detach_keys import EscapeScanner

PACKET = 8192 + 1                  # conmon's read size plus the pipe byte
INPUT_CHUNK = 4096                 # conmon reads one packet into a buffer of this size or more
PIPE_STDOUT, PIPE_STDERR = 2, 3
RESIZE_EVENT = 1
MAX_DIMENSION = 1000               # conmon refuses larger windows

Write = Callable[[bytes], Awaitable[None]]
Read = Callable[[], Awaitable[bytes]]


class AttachError(Exception):
    """The container's shim cannot be reached (it is not running)."""


async def connect(socket_dir: Path, cid: str) -> socket.socket:
    """A connection to the attach socket of container `cid`'s shim."""
    try:
        dir_fd = os.open(socket_dir / cid, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise AttachError(f"container {cid} has no shim to attach to: {e.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{dir_fd}/attach")
    except OSError as e:
        sock.close()
        raise AttachError(f"cannot attach to container {cid}: {e.strerror or e}") from None
    finally:
        os.close(dir_fd)
    return sock


async def relay(sock: socket.socket, write: Write, read: Read | None, *, tty: bool, stdout: bool,
                stderr: bool, client_gone: asyncio.Event | None = None,
                detach_keys: bytes | None = None) -> bool:
    """Pump output from the shim to `write` and, with `read`, input the other way, until the
    shim closes the socket (the container exited), the client goes away (`client_gone`) or, on
    a TTY with `detach_keys`, the client types them (True: it detached; the keys never reach
    the container, which runs on)."""
    loop = asyncio.get_running_loop()
    scanner = EscapeScanner(detach_keys) if tty and detach_keys else None

    async def output() -> None:
        while True:
            packet = await loop.sock_recv(sock, PACKET)
            if not packet:
                return
            pipe, data = packet[0], packet[1:]
            if not data or (pipe == PIPE_STDOUT and not stdout) or (pipe == PIPE_STDERR and not stderr):
                continue
            if tty:
                await write(data)
            else:
                await write(frame(STDERR if pipe == PIPE_STDERR else STDOUT, data))

    async def input_() -> bool:
        assert read is not None
        while True:
            data = await read()
            if not data:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)     # the shim closes the container's stdin
                return False
            detached = False
            if scanner is not None:
                data, detached = scanner.feed(data)
            for start in range(0, len(data), INPUT_CHUNK):
                await loop.sock_sendall(sock, data[start:start + INPUT_CHUNK])
            if detached:
                return True

    async def gone() -> None:
        if client_gone is not None:
            await client_gone.wait()
        else:
            await asyncio.Event().wait()

    pump_out = asyncio.ensure_future(output())
    pump_in = asyncio.ensure_future(input_()) if read is not None else None
    watch = asyncio.ensure_future(gone())
    detached = False
    try:
        waiting: set[asyncio.Future[Any]] = {pump_out, watch}
        if pump_in is not None:
            waiting.add(pump_in)
        while True:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if pump_in in done:      # the input ended: output goes on, unless the client detached
                detached = not pump_in.cancelled() and pump_in.exception() is None and pump_in.result()
            if detached or pump_out in done or watch in done:
                break
        if pump_out.done() and not pump_out.cancelled() and pump_out.exception() is not None:
            exc = pump_out.exception()
            if not isinstance(exc, (ConnectionError, OSError)):
                raise exc  # type: ignore[misc]
    finally:
        for task in (pump_out, pump_in, watch):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (pump_out, pump_in, watch) if t is not None), return_exceptions=True)
        sock.close()
    return detached


def resize(bundle: Path, height: int, width: int) -> None:
    """Ask the shim to set the container's terminal size (blocking-free; AttachError if the shim
    is gone)."""
    height, width = min(height, MAX_DIMENSION), min(width, MAX_DIMENSION)
    try:
        fd = os.open(bundle / "ctl", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:       # ENXIO: nobody reads the fifo, the shim is gone
        raise AttachError(f"cannot resize: the container's shim is gone ({e.strerror})") from None
    try:
        os.write(fd, f"{RESIZE_EVENT} {height} {width}\n".encode())
    finally:
        os.close(fd)
