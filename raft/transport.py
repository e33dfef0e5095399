"""Raft message transport: asyncio TCP (optionally mutual TLS) with length-prefixed msgpack frames.

Each frame is `u32 big-endian length | encoded Message` (raft/codec.py); frames may be large (up to
`MAX_FRAME`), so there is no datagram-size cap. Connections are one-way: a node dials each peer to
send and accepts connections to receive; every received message is handed to `deliver(msg)`.

Per peer there are two independent lanes, each with its own bounded backlog, connection task and TCP
connection: the *main* lane (votes, appends, heartbeats, reads) and the *snapshot* lane (SNAPSHOT
chunks). A multi-megabyte snapshot transfer therefore never delays a heartbeat. `send()` never
blocks: it appends to the lane's backlog, and `flush()` (called by the driver after each batch of
sends, and scheduled by `send()` as a fallback) writes each lane's backlog to its socket as one
write, with no task switch. A lane whose socket buffer is above `HIGH_WATER` (a slow peer) keeps
its backlog until the connection task has drained the socket; when a backlog is full the message is
dropped and `on_unreachable(peer)` is called, which Raft tolerates (it retries); other peers are
unaffected. A lane that loses its connection reconnects with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

from raft.codec import CodecError, decode_message, encode_message
from raft.types import Message, MessageType

log = logging.getLogger("raft.transport")

MAX_FRAME = 1 << 30
HIGH_WATER = 4 << 20        # bytes buffered towards a peer above which a lane stops writing
_LEN = struct.Struct(">I")
Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """'host:port' → (host, port), with a clear error for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad address {text!r}: expected host:port")
    return host.strip("[]"), int(port)


def tls_contexts(cert_file: str, key_file: str, ca_file: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for mutual TLS: both sides present a cert signed by the CA, and both
    require the other's. Peers are addressed by IP, so the client verifies the chain, not the name."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    server.load_cert_chain(cert_file, key_file)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    client.load_cert_chain(cert_file, key_file)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_REQUIRED
    return server, client


class _Lane:
    """One backlog + one connection + one connection task towards one peer."""

    def __init__(self, transport: Transport, peer: int, name: str, size: int) -> None:
        self.transport = transport
        self.peer = peer
        self.name = name
        self.size = size
        self.backlog: list[Message] = []
        self.writer: asyncio.StreamWriter | None = None     # set while connected and writable
        self.blocked = False                                # the socket buffer is above HIGH_WATER
        self.drain_needed: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.kick = asyncio.Event()     # the peer was heard from: cut a backoff sleep short

    def offer(self, msg: Message) -> bool:
        if len(self.backlog) >= self.size:
            return False
        self.backlog.append(msg)
        return True

    def flush(self) -> None:
        """Write the backlog as one write, unless disconnected or the peer is not keeping up."""
        writer = self.writer
        if writer is None or self.blocked or not self.backlog or writer.transport.is_closing():
            return                      # (a closing connection: the backlog waits for the next one)
        frames, self.backlog = self.backlog, []
        parts: list[bytes] = []
        for msg in frames:
            body = encode_message(msg)
            parts.append(_LEN.pack(len(body)))
            parts.append(body)
        writer.write(b"".join(parts))
        if writer.transport.get_write_buffer_size() > HIGH_WATER:
            self.blocked = True
            if self.drain_needed is not None and not self.drain_needed.done():
                self.drain_needed.set_result(None)

    async def run(self) -> None:
        t = self.transport
        loop = asyncio.get_running_loop()
        delay = t.backoff_min
        while not t.closing:
            addr = t.peers.get(self.peer)
            if addr is None:
                return
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # races with a completing connect, which would leave this lane running after close().
                async with asyncio.timeout(t.connect_timeout):
                    reader, writer = await asyncio.open_connection(addr[0], addr[1], ssl=t.client_ssl)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                log.debug("node %d: %s lane to %d at %s: connect failed: %s",
                          t.node_id, self.name, self.peer, addr, exc)
                self._drop_queued()
                t.on_unreachable(self.peer)
                delay = await self._backoff(delay)
                continue
            connected_at = loop.time()
            _cap_retransmissions(writer)
            self.connected.set()
            try:
                if t.dial_preamble:
                    writer.write(t.dial_preamble)
                await self._pump(writer, reader)
            except (OSError, ConnectionError, ssl.SSLError) as exc:
                log.debug("node %d: %s lane to %d lost: %s", t.node_id, self.name, self.peer, exc)
                t.on_unreachable(self.peer)
            finally:
                self.connected.clear()
                writer.transport.abort()    # never wait to flush towards a peer that is not reading
            if loop.time() - connected_at > 1.0:
                delay = t.backoff_min       # a healthy connection broke: redial at once
            else:
                # Refused right after connecting (e.g. TLS rejected us): back off like a failed dial.
                delay = await self._backoff(delay)

    async def _backoff(self, delay: float) -> float:
        """Sleep a jittered `delay`, or less if the peer dials us meanwhile (it is back: a restarted
        peer must not wait out our backoff before it hears votes and appends). Returns the next delay."""
        self.kick.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay * (0.5 + random.random())):
                await self.kick.wait()
                return self.transport.backoff_min
        return min(delay * 2, self.transport.backoff_max)

    async def _pump(self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
        """While connected: `flush()` writes directly; this task only waits for the peer to close
        the connection, or drains the socket when a flush found it too full."""
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[Any] = asyncio.ensure_future(reader.read(1))  # the peer never writes: EOF
        self.writer = writer
        self.blocked = False
        try:
            while True:
                self.flush()
                if not self.blocked:
                    self.drain_needed = loop.create_future()
                    waiters: set[asyncio.Future[Any]] = {closed, self.drain_needed}
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if closed.done():
                    raise ConnectionError("peer closed the connection")
                await writer.drain()
                self.blocked = False
        finally:
            self.writer = None
            if self.drain_needed is not None and not self.drain_needed.done():
                self.drain_needed.cancel()
            self.drain_needed = None
            if not closed.done():
                closed.cancel()
            # gather, not suppress(CancelledError): a cancellation of this task must propagate
            await asyncio.gather(closed, return_exceptions=True)

    def _drop_queued(self) -> None:
        self.backlog.clear()


class Transport:
    def __init__(self, node_id: int, listen: Address, deliver: Callable[[Message], None], *,
                 on_unreachable: Callable[[int], None] = lambda peer: None,
                 server_ssl: ssl.SSLContext | None = None, client_ssl: ssl.SSLContext | None = None,
                 queue_size: int = 4096, snapshot_queue_size: int = 8,
                 backoff_min: float = 0.02, backoff_max: float = 0.5, connect_timeout: float = 1.0,
                 external_listener: bool = False, dial_preamble: bytes = b"") -> None:
        """With `external_listener`, the transport does not listen itself: whoever owns the port hands
        it inbound connections through `serve_connection`, and `dial_preamble` (e.g. a channel hello)
        is written first on every outgoing connection, so Raft can share a port with other traffic."""
        self.node_id = node_id
        self.external_listener = external_listener
        self.dial_preamble = dial_preamble
        self.listen = listen
        self.deliver = deliver
        self.on_unreachable = on_unreachable
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.queue_size = queue_size
        self.snapshot_queue_size = snapshot_queue_size
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.peers: dict[int, Address] = {}
        self._lanes: dict[int, tuple[_Lane, _Lane]] = {}
        self._server: asyncio.Server | None = None
        self._inbound: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._retired: set[asyncio.Task[None]] = set()     # cancelled lanes, awaited on close
        self.bound: Address | None = None
        self.dropped = 0
        self.closing = False
        self._dirty: list[_Lane] = []
        self._flush_scheduled = False

    async def start(self) -> Address:
        """Listen; returns the bound (host, port) (port 0 picks a free one)."""
        if self.external_listener:
            self.bound = self.listen
            return self.bound
        self._server = await asyncio.start_server(self._serve, self.listen[0], self.listen[1],
                                                  ssl=self.server_ssl)
        sock = self._server.sockets[0].getsockname()
        self.bound = (sock[0], sock[1])
        return self.bound

    # -- peers ---------------------------------------------------------------------------------------

    def set_peer(self, peer: int, addr: Address) -> None:
        """Add a peer or move it to a new address (its connections are re-dialled)."""
        if peer == self.node_id:
            return
        if self.peers.get(peer) == addr and peer in self._lanes:
            return
        self._stop_lanes(peer)
        self.peers[peer] = addr
        main = _Lane(self, peer, "main", self.queue_size)
        snap = _Lane(self, peer, "snapshot", self.snapshot_queue_size)
        main.task = asyncio.create_task(main.run(), name=f"raft-send-{self.node_id}-{peer}")
        snap.task = asyncio.create_task(snap.run(), name=f"raft-snap-{self.node_id}-{peer}")
        self._lanes[peer] = (main, snap)

    def remove_peer(self, peer: int) -> None:
        self._stop_lanes(peer)
        self.peers.pop(peer, None)

    def _stop_lanes(self, peer: int) -> None:
        lanes = self._lanes.pop(peer, None)
        for lane in lanes or ():
            if lane.task is not None:
                lane.task.cancel()
                self._retired.add(lane.task)
                lane.task.add_done_callback(self._retired.discard)

    def is_connected(self, peer: int) -> bool:
        lanes = self._lanes.get(peer)
        return bool(lanes and lanes[0].connected.is_set())

    # -- sending -------------------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue a message for its peer; never blocks. Unknown peers and full backlogs drop it.
        It leaves at the next `flush()` (at the latest on the event loop's next turn)."""
        lanes = self._lanes.get(msg.to)
        if lanes is None:
            self.dropped += 1
            self.on_unreachable(msg.to)
            return
        lane = lanes[1] if msg.type == MessageType.SNAPSHOT else lanes[0]
        if not lane.offer(msg):
            self.dropped += 1
            self.on_unreachable(msg.to)
            return
        self._dirty.append(lane)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write every backlog that `send()` added to since the last flush."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for lane in dirty:
            lane.flush()

    # -- receiving -----------------------------------------------------------------------------------

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Receive messages from one inbound connection until it ends (also for external listeners)."""
        await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inbound[task] = writer
        first = True
        try:
            while True:
                header = await reader.readexactly(4)
                (length,) = _LEN.unpack(header)
                if length > MAX_FRAME:
                    log.warning("node %d: refusing %d-byte frame from %s", self.node_id, length,
                                writer.get_extra_info("peername"))
                    return
                body = await reader.readexactly(length)
                try:
                    msg = decode_message(body)
                except CodecError as exc:
                    log.warning("node %d: dropping connection with a bad frame: %s", self.node_id, exc)
                    return
                if msg.to != self.node_id:
                    continue
                if first:
                    first = False
                    self._heard_from(msg.frm)
                self.deliver(msg)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
            return
        finally:
            self._inbound.pop(task, None)
            writer.transport.abort()

    def _heard_from(self, peer: int) -> None:
        for lane in self._lanes.get(peer, ()):
            if not lane.connected.is_set():
                lane.kick.set()

    # -- shutdown ------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop accepting, stop the senders, drop inbound connections, and wait for all of them."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        tasks = [lane.task for lanes in self._lanes.values() for lane in lanes if lane.task is not None]
        self._lanes.clear()
        tasks.extend(self._retired)
        for t in tasks:
            t.cancel()
        # Inbound handlers are asyncio's server tasks: end them by aborting their connections.
        inbound = list(self._inbound.items())
        for _, writer in inbound:
            writer.transport.abort()
        await asyncio.gather(*tasks, *(t for t, _ in inbound), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


# TCP doubles its retransmission timeout while a peer is cut off (up to 120 s by default), so the
# appends and votes queued on a lane into a partition waited after the heal for the next
# retransmission, seconds. Capped at one a second (TCP_RTO_MAX_MS, Linux >= 6.13; the least the
# kernel accepts), they arrive within a second of the heal. Nothing is cut sooner.
TCP_RTO_MAX_MS = 44     # include/uapi/linux/tcp.h
RTO_MAX_MS = 1000


def _cap_retransmissions(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # older kernels: ENOPROTOOPT, the default stays
            sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, RTO_MAX_MS)
