"""Engine API handlers for service and task logs (`GET /services/{ref}/logs`,
`GET /tasks/{ref}/logs`).

Theory of operation: the handler resolves the reference in the store (404 `service X not
found` / `task X not found`), opens a log stream from the app's LOG_SOURCE (the leader's broker,
directly or through the leader) and answers 200 with a chunked body as the lines come. Each
line is a multiplexed-stream frame `[stream,0,0,0,len32be]` + `[<RFC3339Nano> ][<details> ]<msg>\\n`
(TTY services: the payload alone, `application/vnd.docker.multiplexed-stream` vs
`…raw-stream`). details are `com.docker.swarm.node.id=…,com.docker.swarm.service.id=…,
com.docker.swarm.task.id=…`, which the docker CLI needs to label lines. Parts of the stream
that could not be read are reported once at the end, as one system-error frame (stream 3),
because the docker CLI stops reading at such a frame. The stream ends with the subscription
(without follow) or when the client goes away; either way the subscription is closed.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import web

from engineapi.http import ApiError, Routes, query_bool
from engineapi.logframes import details_text, frame
from manager.api.cluster import cluster_store
from manager.api.objects_common import api_errors
from manager.logbroker import ChannelEnded, LogItem, LogOptions, LogRecord, LogSelector, LogWarning
from manager.logbroker.access import LogStream

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"
SYSTEM_ERROR = 3
CLIENT_CHECK_INTERVAL = 1.0
NO_STREAM = "Bad parameters: you must choose at least one stream"
INCOMPLETE = "warning: incomplete log stream. some logs could not be retrieved for the following reasons: "
NO_LOGS = "logs are not available on this node: it is not a swarm manager"


class LogSource(Protocol):
    async def open(self, selector: LogSelector, options: LogOptions) -> LogStream: ...


LOG_SOURCE = web.AppKey("log_source", LogSource)


@dataclass(frozen=True)
class LogQuery:
    stdout: bool
    stderr: bool
    timestamps: bool
    details: bool
    options: LogOptions


def parse_log_query(request: web.Request) -> LogQuery:
    stdout, stderr = query_bool(request, "stdout"), query_bool(request, "stderr")
    if not (stdout or stderr):
        raise ApiError(400, NO_STREAM)
    raw_tail = request.query.get("tail", "").strip()
    tail: int | None = None
    if raw_tail and raw_tail != "all":
        try:
            tail = int(raw_tail)
        except ValueError:
            raise ApiError(400, f"invalid tail value {raw_tail!r}: use \"all\" or a number of lines") from None
        if tail < 0:
            tail = None
    raw_since = request.query.get("since", "").strip()
    since: float | None = None
    if raw_since:
        try:
            since = float(raw_since)
        except ValueError:
            raise ApiError(400, f"invalid since value {raw_since!r}: use Unix seconds, e.g. 1700000000.5") from None
        if since <= 0:
            since = None
    return LogQuery(stdout, stderr, query_bool(request, "timestamps"), query_bool(request, "details"),
                    LogOptions(follow=query_bool(request, "follow"), tail=tail, since=since))


def docker_timestamp(ts: str) -> str:
    """A log timestamp as the Engine API writes it: UTC, nine fraction digits, `Z`
    ("2026-01-02T04:04:05.5+01:00" → "2026-01-02T03:04:05.500000000Z"). Unparseable: as is."""
    text = ts.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    digits = "".join(itertools.takewhile(str.isdigit, rest)) if dot else ""
    zone = rest[len(digits):] if dot else head[19:]
    try:
        moment = datetime.fromisoformat(head[:19] + (zone or "+00:00")).astimezone(UTC)
    except ValueError:
        return ts
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + "." + digits[:9].ljust(9, "0") + "Z"


def render(record: LogRecord, query: LogQuery, framed: bool) -> bytes:
    if (record.stream == "stdout" and not query.stdout) or (record.stream == "stderr" and not query.stderr):
        return b""
    payload = b""
    if query.timestamps:
        payload += docker_timestamp(record.timestamp).encode() + b" "
    if query.details:
        payload += details_text({"com.docker.swarm.node.id": record.node_id,
                                 "com.docker.swarm.service.id": record.service_id,
                                 "com.docker.swarm.task.id": record.task_id}).encode() + b" "
    payload += record.message + b"\n"
    return frame(2 if record.stream == "stderr" else 1, payload) if framed else payload


def incomplete_notice(warnings: list[str], framed: bool) -> bytes:
    text = ("Error grabbing logs: " + INCOMPLETE + ", ".join(warnings) + "\n").encode()
    return frame(SYSTEM_ERROR, text) if framed else text


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream_logs(request: web.Request, selector: LogSelector, query: LogQuery, tty: bool) -> web.StreamResponse:
    source = request.app.get(LOG_SOURCE)
    if source is None:
        raise ApiError(503, NO_LOGS)
    stream = await source.open(selector, query.options)
    framed = not tty
    warnings: list[str] = []
    try:
        response = web.StreamResponse(status=200)
        response.content_type = MULTIPLEXED if framed else RAW
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                try:
                    batch: list[LogItem] = await stream.get(CLIENT_CHECK_INTERVAL)
                except ChannelEnded:
                    break
                if not batch and _client_gone(request):
                    return response
                out = []
                for item in batch:
                    if isinstance(item, LogWarning):
                        warnings.append(item.message)
                    else:
                        out.append(render(item, query, framed))
                data = b"".join(out)
                if data:
                    await response.write(data)
            if warnings:
                await response.write(incomplete_notice(warnings, framed))
            await response.write_eof()
        return response
    finally:
        await stream.aclose()


async def service_logs(request: web.Request) -> web.StreamResponse:
    store = cluster_store(request)
    query = parse_log_query(request)
    ref = request.match_info["ref"]
    with api_errors():
        service = store.view(lambda tx: tx.lookup("services", ref))
    container = (service.spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    return await stream_logs(request, LogSelector(service_ids=(service.id,)), query, bool(container.get("TTY")))


async def task_logs(request: web.Request) -> web.StreamResponse:
    store = cluster_store(request)
    query = parse_log_query(request)
    ref = request.match_info["ref"]
    with api_errors():
        task = store.view(lambda tx: tx.lookup("tasks", ref))
    container = task.spec.get("ContainerSpec") or {}
    return await stream_logs(request, LogSelector(task_ids=(task.id,)), query, bool(container.get("TTY")))


def add_routes(routes: Routes) -> None:
    routes.add("GET", "/services/{ref}/logs", service_logs)
    routes.add("GET", "/tasks/{ref}/logs", task_logs)
