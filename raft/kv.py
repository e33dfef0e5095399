"""An example replicated key-value store on RaftNode, for tests and benchmarks: `python -m raft.kv`.

Every write is a Raft proposal answered only after it is committed and applied on this node; every
read first obtains a ReadIndex (confirmed by a quorum) and waits for it to be applied, so reads are
linearizable on any member. Writes that reach a follower are answered with 307 and the leader's
HTTP address (`Location`), or 503 when no leader is known yet.

HTTP API:
  PUT    /kv/{key}        body = value → 204 once committed and applied
  GET    /kv/{key}        → 200 value | 404
  DELETE /kv/{key}        → 204
  GET    /status          → JSON {id, role, term, leader, leader_http, commit, applied, ...}
  POST   /members         JSON {"id": 4, "raft": "h:p", "http": "h:p", "learner": false} → 200 conf
  POST   /members/{id}/promote → 200 conf (learner → voter)
  DELETE /members/{id}    → 200 conf
When ready it prints one JSON line: {"event": "ready", "id": ..., "raft": "h:p", "http": "h:p"}.

HTTP serving: every connection starts on `FastKVProtocol`, a lean HTTP/1.1 path that answers plain
`PUT|GET|DELETE /kv/{key}` requests itself (one request at a time per connection, answers in order;
a write is a `RaftNode.submit` future with a timer, no task per request). At the first request it
does not fully understand (another path, an unusual key, chunked bodies, Expect, HTTP/1.0, a bare
LF, a body over 1 MiB, ...) it hands the connection, with every unread byte, to aiohttp, which
serves it from then on. Both paths share the reply logic below, so they answer alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
from typing import Any, NamedTuple

import msgpack
from aiohttp import web

from raft.confchange import ConfChangeError
from raft.node import Member, NodeOptions, NodeStopped, RaftNode
from raft.storage import StorageCorruptError
from raft.transport import Address, parse_address
from raft.types import ConfState, Entry, NotLeader, ProposalDropped
from raft.wal import WALCorruptError

log = logging.getLogger("raft.kv")

WRITE_TIMEOUT = 5.0
READ_TIMEOUT = 3.0


class KVStateMachine:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def apply(self, entry: Entry) -> None:
        op = msgpack.unpackb(entry.data)
        if op[0] == "p":
            self.data[op[1]] = op[2]
        elif op[0] == "d":
            self.data.pop(op[1], None)
        else:
            raise ValueError(f"unknown kv operation {op[0]!r} at index {entry.index}")

    def snapshot(self) -> bytes:
        return msgpack.packb(self.data, use_bin_type=True)

    def restore(self, data: bytes) -> None:
        self.data = msgpack.unpackb(data, raw=False) if data else {}


def parse_peers(text: str) -> dict[int, Member]:
    """'1=raft[/http],2=...' → members; raises ValueError naming the bad part."""
    members: dict[int, Member] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        ident, sep, addrs = part.partition("=")
        if not sep or not ident.isdigit() or int(ident) <= 0:
            raise ValueError(f"bad peer {part!r}: expected ID=RAFT_HOST:PORT[/HTTP_HOST:PORT]")
        raft_addr, _, http_addr = addrs.partition("/")
        extra = {}
        if http_addr:
            parse_address(http_addr)
            extra["http"] = http_addr
        members[int(ident)] = Member(parse_address(raft_addr), extra)
    return members


def _conf_json(conf: ConfState) -> dict[str, list[int]]:
    return {"voters": list(conf.voters), "learners": list(conf.learners)}


# -- replies, shared by the fast path and aiohttp ------------------------------------------------------

class Reply(NamedTuple):
    status: int
    body: bytes = b""
    content_type: str = ""
    location: str = ""


def json_reply(status: int, obj: Any) -> Reply:
    return Reply(status, json.dumps(obj).encode(), "application/json; charset=utf-8")


NO_CONTENT = Reply(204)
WRITE_FAILURES = (NotLeader, ProposalDropped, NodeStopped, TimeoutError)


def _to_response(reply: Reply) -> web.Response:
    headers = {}
    if reply.content_type:
        headers["Content-Type"] = reply.content_type
    if reply.location:
        headers["Location"] = reply.location
    return web.Response(status=reply.status, body=reply.body or None, headers=headers)


class KVServer:
    def __init__(self, node: RaftNode, sm: KVStateMachine) -> None:
        self.node = node
        self.sm = sm
        app = web.Application(client_max_size=64 << 20)
        app.router.add_put("/kv/{key}", self.put)
        app.router.add_get("/kv/{key}", self.get)
        app.router.add_delete("/kv/{key}", self.delete)
        app.router.add_get("/status", self.status)
        app.router.add_post("/members", self.add_member)
        app.router.add_post("/members/{id}/promote", self.promote)
        app.router.add_delete("/members/{id}", self.remove_member)
        self.app = app
        self.fast_connections: set[FastKVProtocol] = set()

    def _leader_http(self) -> str | None:
        member = self.node.members.get(self.node.leader)
        return member.extra.get("http") if member else None

    def redirect(self, hint: int, path_qs: str) -> Reply:
        member = self.node.members.get(hint)
        http = member.extra.get("http") if member else None
        if not hint or http is None:
            return json_reply(503, {"error": "no leader known yet; retry"})
        return Reply(307, location=f"http://{http}{path_qs}")

    def start_write(self, op: list[Any]) -> asyncio.Future[Any]:
        """Propose a kv operation; raises one of WRITE_FAILURES when it cannot even start."""
        return self.node.submit(msgpack.packb(op, use_bin_type=True))

    def write_failed(self, exc: BaseException, path_qs: str) -> Reply:
        if isinstance(exc, NotLeader):
            return self.redirect(exc.leader, path_qs)
        return json_reply(503, {"error": f"write not confirmed: {exc or 'timeout'}"})

    async def write(self, op: list[Any], path_qs: str) -> Reply:
        try:
            fut = self.start_write(op)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await fut
        except WRITE_FAILURES as exc:
            return self.write_failed(exc, path_qs)
        return NO_CONTENT

    async def read(self, key: str, path_qs: str) -> Reply:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                await self.node.read_index()
        except NotLeader as exc:
            return self.redirect(exc.leader, path_qs)
        except (NodeStopped, TimeoutError) as exc:
            return json_reply(503, {"error": f"read not confirmed: {exc or 'timeout'}"})
        value = self.sm.data.get(key)
        if value is None:
            return json_reply(404, {"error": "not found"})
        return Reply(200, value, "application/octet-stream")

    # -- aiohttp handlers ------------------------------------------------------------------------------

    async def put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        return _to_response(await self.write(["p", key, await request.read()], request.path_qs))

    async def delete(self, request: web.Request) -> web.Response:
        return _to_response(await self.write(["d", request.match_info["key"]], request.path_qs))

    async def get(self, request: web.Request) -> web.Response:
        return _to_response(await self.read(request.match_info["key"], request.path_qs))

    async def status(self, request: web.Request) -> web.Response:
        st = self.node.status()
        st["leader_http"] = self._leader_http()
        st["keys"] = len(self.sm.data)
        return web.json_response(st)

    async def _membership(self, request: web.Request, coro: Any) -> web.Response:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                conf = await coro
        except NotLeader as exc:
            return _to_response(self.redirect(exc.leader, request.path_qs))
        except ConfChangeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except (ProposalDropped, NodeStopped, TimeoutError) as exc:
            return web.json_response({"error": f"membership change not confirmed: {exc or 'timeout'}"},
                                     status=503)
        return web.json_response(_conf_json(conf))

    async def add_member(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            node_id = body["id"]
            if not isinstance(node_id, int) or node_id <= 0:
                raise ValueError(f"id must be a positive integer, got {node_id!r}")
            extra = {"http": str(parse_address(body["http"]) and body["http"])} if body.get("http") else {}
            member = Member(parse_address(str(body["raft"])), extra)
            learner = bool(body.get("learner", False))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response(
                {"error": f"bad member: {exc!s}; expected JSON {{id, raft, http, learner?}}"}, status=400)
        return await self._membership(request, self.node.add_member(node_id, member, learner=learner))

    def _id_param(self, request: web.Request) -> int | None:
        raw = request.match_info["id"]
        return int(raw) if raw.isdigit() and int(raw) > 0 else None

    async def promote(self, request: web.Request) -> web.Response:
        node_id = self._id_param(request)
        if node_id is None:
            return web.json_response({"error": "member id must be a positive integer"}, status=400)
        return await self._membership(request, self.node.promote_learner(node_id))

    async def remove_member(self, request: web.Request) -> web.Response:
        node_id = self._id_param(request)
        if node_id is None:
            return web.json_response({"error": "member id must be a positive integer"}, status=400)
        return await self._membership(request, self.node.remove_member(node_id))


# -- the fast path -------------------------------------------------------------------------------------

MAX_FAST_HEAD = 16 << 10
MAX_FAST_BODY = 1 << 20
_FAST_METHODS = (b"PUT", b"GET", b"DELETE")
_PLAIN_KEY = re.compile(rb"[A-Za-z0-9._~-]+").fullmatch    # unreserved characters: no decoding needed
_REASONS = {200: "OK", 204: "No Content", 307: "Temporary Redirect", 404: "Not Found",
            500: "Internal Server Error", 503: "Service Unavailable"}
_NO_CONTENT_BYTES = b"HTTP/1.1 204 No Content\r\n\r\n"


class SimpleRequest(NamedTuple):
    method: bytes
    key: str
    content_length: int
    close: bool


def parse_simple_request(head: bytes) -> SimpleRequest | None:
    """The request head (without its final CRLFCRLF) of a plain HTTP/1.1 request for /kv/{key}, or
    None when anything in it is beyond the fast path (aiohttp then judges the request)."""
    lines = head.split(b"\r\n")
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
        return None                                     # a bare CR or LF somewhere
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in _FAST_METHODS \
            or not parts[1].startswith(b"/kv/"):
        return None
    key = parts[1][4:]
    if not _PLAIN_KEY(key) or key in (b".", b".."):
        return None
    length = -1
    close = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or b" " in name or b"\t" in name:
            return None
        name = name.lower()
        if name == b"content-length":
            value = value.strip()
            if length >= 0 or not value.isdigit():
                return None
            length = int(value)
        elif name == b"connection":
            tokens = value.lower()
            if b"upgrade" in tokens:
                return None
            close = close or b"close" in tokens
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
    if length > MAX_FAST_BODY:
        return None
    return SimpleRequest(parts[0], key.decode("ascii"), max(length, 0), close)


def encode_reply(reply: Reply, close: bool) -> bytes:
    if reply.status == 204 and not close:
        return _NO_CONTENT_BYTES
    lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}"]
    if reply.content_type:
        lines.append(f"Content-Type: {reply.content_type}")
    if reply.location:
        lines.append(f"Location: {reply.location}")
    if reply.status != 204:
        lines.append(f"Content-Length: {len(reply.body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


class FastKVProtocol(asyncio.Protocol):
    """One HTTP connection on the fast path (see the module docstring). Invariant: at most one
    request is in flight (`busy`); bytes that arrive meanwhile wait in `buf`, and reading pauses
    when they pile up."""

    def __init__(self, kv: KVServer, fallback: Any) -> None:
        self.kv = kv
        self.fallback = fallback                # aiohttp's protocol factory (web.Server)
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False
        self.close_after = False
        self.paused = False
        self.path = ""
        self.pending: asyncio.Future[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport      # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)
        self.kv.fast_connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.kv.fast_connections.discard(self)
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
        if self.pending is not None and not self.pending.done():
            self.pending.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self._next()
        elif len(self.buf) > MAX_FAST_HEAD + MAX_FAST_BODY and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()

    def _next(self) -> None:
        while self.transport is not None and not self.busy and self.buf:
            buf = self.buf
            end = buf.find(b"\r\n\r\n", 0, MAX_FAST_HEAD)
            if end < 0:
                if len(buf) >= MAX_FAST_HEAD or b"\n\n" in buf:
                    self._hand_over()
                return
            req = parse_simple_request(buf[:end])
            if req is None:
                self._hand_over()
                return
            start = end + 4
            stop = start + req.content_length
            if len(buf) < stop:
                return
            self.buf = buf[stop:]
            self.close_after = req.close
            self._dispatch(req, buf[start:stop])

    def _dispatch(self, req: SimpleRequest, body: bytes) -> None:
        self.path = "/kv/" + req.key
        if req.method == b"GET":
            self.busy = True
            task = asyncio.ensure_future(self.kv.read(req.key, self.path))
            self.pending = task
            task.add_done_callback(self._read_done)
            return
        op: list[Any] = ["p", req.key, body] if req.method == b"PUT" else ["d", req.key]
        try:
            fut = self.kv.start_write(op)
        except WRITE_FAILURES as exc:
            self._reply(self.kv.write_failed(exc, self.path))
            return
        self.busy = True
        self.pending = fut
        self.timer = asyncio.get_running_loop().call_later(WRITE_TIMEOUT, fut.cancel)
        fut.add_done_callback(self._write_done)

    def _write_done(self, fut: asyncio.Future[Any]) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if fut.cancelled():
            reply = json_reply(503, {"error": "write not confirmed: timeout"})
        else:
            exc = fut.exception()
            if exc is None:
                reply = NO_CONTENT
            elif isinstance(exc, WRITE_FAILURES):
                reply = self.kv.write_failed(exc, self.path)
            else:
                log.warning("write to %s failed: %r", self.path, exc)
                reply = json_reply(500, {"error": f"write failed: {exc!r}"})
        self._reply(reply)
        self._next()

    def _read_done(self, task: asyncio.Future[Reply]) -> None:
        if task.cancelled():
            return                              # the connection is gone
        exc = task.exception()
        if exc is not None:
            log.warning("read of %s failed: %r", self.path, exc)
        self._reply(task.result() if exc is None else json_reply(500, {"error": f"read failed: {exc!r}"}))
        self._next()

    def _reply(self, reply: Reply) -> None:
        self.busy = False
        self.pending = None
        transport = self.transport
        if transport is None:
            return
        transport.write(encode_reply(reply, self.close_after))
        if self.close_after:
            transport.close()
            self.transport = None
        elif self.paused:
            self.paused = False
            transport.resume_reading()

    def _hand_over(self) -> None:
        """Give the connection and every unread byte to aiohttp for the rest of its life."""
        transport, buf = self.transport, self.buf
        assert transport is not None
        self.kv.fast_connections.discard(self)
        self.transport, self.buf = None, b""
        handler = self.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.paused:
            transport.resume_reading()
        handler.data_received(buf)


class HTTPFrontend:
    """The HTTP side of a KVServer on one listening socket: the fast path in front of aiohttp."""

    def __init__(self, kv: KVServer) -> None:
        self.kv = kv
        self.runner = web.AppRunner(kv.app, access_log=None, handle_signals=False)
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> Address:
        """Listen (port 0 picks a free one); returns the bound (host, port)."""
        await self.runner.setup()
        fallback = self.runner.server
        assert fallback is not None
        self.server = await asyncio.get_running_loop().create_server(
            lambda: FastKVProtocol(self.kv, fallback), host, port, reuse_address=True)
        sock = self.server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def close(self) -> None:
        """Stop accepting, drop fast-path connections (their pending requests are abandoned), then
        shut aiohttp down with the connections it was handed."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.kv.fast_connections):
            if conn.transport is not None:
                conn.transport.close()
        if self.runner.server is not None:
            await self.runner.cleanup()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raft.kv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", type=int, required=True, help="this node's id (positive integer)")
    p.add_argument("--raft", required=True, help="raft listen address host:port")
    p.add_argument("--http", required=True, help="HTTP listen address host:port")
    p.add_argument("--peers", required=True,
                   help="members as ID=RAFT[/HTTP],...; e.g. 1=127.0.0.1:7001/127.0.0.1:8001,2=... "
                        "(the HTTP part lets followers redirect writes to the leader). On a node founding "
                        "the cluster: the founding members (the initial voters). With --join: the current "
                        "members plus this node.")
    p.add_argument("--data-dir", required=True, help="directory for the WAL and snapshots")
    p.add_argument("--join", action="store_true",
                   help="do not found a cluster: wait to be added with POST /members on the leader")
    p.add_argument("--tick-ms", type=float, default=20.0, help="raft tick length (default 20 ms)")
    p.add_argument("--election-ticks", type=int, default=10,
                   help="election timeout in ticks (default 10: a follower campaigns after 0.2 to 0.4 s "
                        "without a leader, so even a split vote resolves well within 1 s)")
    p.add_argument("--heartbeat-ticks", type=int, default=2,
                   help="heartbeat interval in ticks (default 2: every 40 ms)")
    p.add_argument("--snapshot-every", type=int, default=100_000,
                   help="applied entries between snapshots (default 100000; a snapshot serializes the "
                        "whole store on the event loop, so frequent ones stall writes)")
    p.add_argument("--inline-sync-bytes", type=int, default=65536,
                   help="WAL batches below this size are fsynced on the event loop instead of a worker "
                        "thread (saves a thread hop on fast disks; 0 = always use a thread)")
    p.add_argument("--log-level", default="WARNING")
    return p


async def serve(args: argparse.Namespace) -> None:
    raft_addr, http_addr = parse_address(args.raft), parse_address(args.http)
    members = parse_peers(args.peers)
    me = members.get(args.id)
    members[args.id] = Member(raft_addr, {**(me.extra if me else {}), "http": args.http})
    sm = KVStateMachine()
    opts = NodeOptions(tick_interval=args.tick_ms / 1000.0, election_tick=args.election_ticks,
                       heartbeat_tick=args.heartbeat_ticks,
                       snapshot_every=args.snapshot_every, inline_sync_bytes=args.inline_sync_bytes)
    node = RaftNode(args.id, args.data_dir, sm, members=members, bootstrap=not args.join, options=opts)
    bound: Address = await node.start()
    frontend = HTTPFrontend(KVServer(node, sm))
    try:
        http_bound = await frontend.start(http_addr[0], http_addr[1])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"event": "ready", "id": args.id, "raft": f"{bound[0]}:{bound[1]}",
                          "http": f"{http_bound[0]}:{http_bound[1]}"}), flush=True)
        stopping, failing = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.failed.wait())
        try:
            await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            failing.cancel()
            await asyncio.gather(stopping, failing, return_exceptions=True)   # owned: waited for
        if node.fatal is not None:      # fail-stop: e.g. the disk refused a write
            raise NodeStopped(f"raft node {args.id} failed: {node.fatal!r}")
    finally:
        await frontend.close()          # stop serving HTTP first, then stop raft
        await node.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        parse_peers(args.peers)
        parse_address(args.raft)
        parse_address(args.http)
        if args.id <= 0:
            raise ValueError(f"--id must be a positive integer, got {args.id}")
    except ValueError as exc:
        print(f"raft.kv: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop
        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        with contextlib.suppress(KeyboardInterrupt):
            runner(serve(args))
    except (WALCorruptError, StorageCorruptError) as exc:
        print(f"raft.kv: refusing to start: {exc}", file=sys.stderr)
        return 1
    except NodeStopped as exc:
        print(f"raft.kv: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"raft.kv: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
