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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from typing import Any

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

    def _leader_http(self) -> str | None:
        member = self.node.members.get(self.node.leader)
        return member.extra.get("http") if member else None

    def _redirect(self, request: web.Request, hint: int) -> web.Response:
        member = self.node.members.get(hint)
        http = member.extra.get("http") if member else None
        if not hint or http is None:
            return web.json_response({"error": "no leader known yet; retry"}, status=503)
        return web.Response(status=307, headers={"Location": f"http://{http}{request.path_qs}"})

    async def _write(self, request: web.Request, op: list[Any]) -> web.Response:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await self.node.propose(msgpack.packb(op, use_bin_type=True))
        except NotLeader as exc:
            return self._redirect(request, exc.leader)
        except (ProposalDropped, NodeStopped, TimeoutError) as exc:
            return web.json_response({"error": f"write not confirmed: {exc or 'timeout'}"}, status=503)
        return web.Response(status=204)

    async def put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if not key:
            return web.json_response({"error": "empty key"}, status=400)
        return await self._write(request, ["p", key, await request.read()])

    async def delete(self, request: web.Request) -> web.Response:
        return await self._write(request, ["d", request.match_info["key"]])

    async def get(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                await self.node.read_index()
        except NotLeader as exc:
            return self._redirect(request, exc.leader)
        except (NodeStopped, TimeoutError) as exc:
            return web.json_response({"error": f"read not confirmed: {exc or 'timeout'}"}, status=503)
        value = self.sm.data.get(request.match_info["key"])
        if value is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=value, content_type="application/octet-stream")

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
            return self._redirect(request, exc.leader)
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
    p.add_argument("--tick-ms", type=float, default=10.0, help="raft tick length (default 10 ms)")
    p.add_argument("--election-ticks", type=int, default=20,
                   help="election timeout in ticks (default 20: a follower campaigns after 0.2 to 0.4 s "
                        "without a leader, so even a split vote resolves well within 1 s)")
    p.add_argument("--heartbeat-ticks", type=int, default=4, help="heartbeat interval in ticks (default 4)")
    p.add_argument("--snapshot-every", type=int, default=10000, help="applied entries between snapshots")
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
    server = KVServer(node, sm)
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, http_addr[0], http_addr[1], reuse_address=True)
    try:
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        http_bound = runner.addresses[0][:2] if runner.addresses else http_addr
        print(json.dumps({"event": "ready", "id": args.id, "raft": f"{bound[0]}:{bound[1]}",
                          "http": f"{http_bound[0]}:{http_bound[1]}"}), flush=True)
        stopping, failing = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.failed.wait())
        try:
            await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            failing.cancel()
        if node.fatal is not None:      # fail-stop: e.g. the disk refused a write
            raise NodeStopped(f"raft node {args.id} failed: {node.fatal!r}")
    finally:
        await runner.cleanup()          # stop accepting HTTP first, then stop raft
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
