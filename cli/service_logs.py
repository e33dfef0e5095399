"""`shoal service logs`: the logs of a service's tasks (or of one task), as `docker service logs`
shows them.

Theory of operation: the reference is looked up as a service first and, on 404, as a task; the
CLI then reads `GET /services/{id}/logs` (or `/tasks/{id}/logs`) with `details=1`, whose
`com.docker.swarm.{node,service,task}.id` context names each line's origin. Each line is
printed with the prefix `<service>.<slot>.<task id[:12]>@<node hostname>    | ` (names are
looked up once per ID and kept), stdout lines to stdout and stderr lines to stderr. `--raw`
prints the payload as the daemon sent it; TTY services can only be read raw (their stream is
not framed). A system-error frame (an incomplete stream) is printed and makes the exit code 1.
"""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import click

from cli.client import ApiResponseError, DaemonClient
from cli.common import fail, with_client
from engineapi.logframes import parse_frames

STDERR, SYSTEM_ERROR = 2, 3
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)$")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def since_seconds(text: str, now: float | None = None) -> str:
    """`--since`: a duration before now ("10m", "1.5h"), Unix seconds, or an RFC3339 time →
    the Unix seconds the API takes."""
    now = time.time() if now is None else now
    if match := _DURATION.match(text):
        return f"{now - float(match[1]) * _UNIT_SECONDS[match[2]]:.9f}"
    try:
        return f"{float(text):.9f}"
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration (10m), Unix seconds or an RFC3339 time",
                                 param_hint="--since") from None
    return f"{moment.timestamp():.9f}"


def parse_details(text: str) -> dict[str, str]:
    out = {}
    for pair in text.split(","):
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"invalid details in log line: {text!r}")
        out[unquote(key)] = unquote(value)
    return out


class LinePrefixer:
    """Names for the prefix of each line, looked up through the API once per ID."""

    def __init__(self, client: DaemonClient, *, task_ids: bool, no_trunc: bool, width: int) -> None:
        self._client = client
        self._task_ids = task_ids
        self._no_trunc = no_trunc
        self._width = width
        self._cache: dict[tuple[str, str], Any] = {}

    async def _get(self, kind: str, object_id: str) -> Any:
        key = (kind, object_id)
        if key not in self._cache:
            try:
                self._cache[key] = await self._client.get(f"/{kind}/{object_id}")
            except ApiResponseError:
                self._cache[key] = None
        return self._cache[key]

    async def prefix(self, details: dict[str, str]) -> str:
        node_id = details.get("com.docker.swarm.node.id", "")
        service_id = details.get("com.docker.swarm.service.id", "")
        task_id = details.get("com.docker.swarm.task.id", "")
        if not (node_id and service_id and task_id):
            raise ValueError("log line without its node, service and task IDs")
        node, service, task = (await self._get("nodes", node_id), await self._get("services", service_id),
                               await self._get("tasks", task_id))
        service_name = service["Spec"]["Name"] if service else service_id
        slot = str((task or {}).get("Slot") or node_id)
        name = f"{service_name}.{slot}"
        if self._task_ids:
            name += "." + (task_id if self._no_trunc else task_id[:12])
        hostname = ((node or {}).get("Description") or {}).get("Hostname") or node_id
        padding = " " * max(0, self._width - len(slot))
        return f"{name}@{hostname}{padding}    | "


async def _resolve(client: DaemonClient, ref: str) -> tuple[str, str, bool, int]:
    """(path of the logs, kind, TTY, slot width) for a service or, failing that, a task."""
    try:
        service = await client.get(f"/services/{ref}", insertDefaults="false")
        kind, path, spec = "service", f"/services/{service['ID']}/logs", service["Spec"]["TaskTemplate"]
        replicas = ((service["Spec"].get("Mode") or {}).get("Replicated") or {}).get("Replicas") or 1
    except ApiResponseError as e:
        if e.status != 404:
            raise
        try:
            task = await client.get(f"/tasks/{ref}")
        except ApiResponseError as task_error:
            if task_error.status == 404:
                raise ApiResponseError(404, f"no such service or task: {ref}") from None
            raise
        kind, path, spec, replicas = "task", f"/tasks/{task['ID']}/logs", task["Spec"], task.get("Slot") or 1
    tty = bool((spec.get("ContainerSpec") or {}).get("TTY"))
    return path, kind, tty, len(str(replicas))


def _write(stream_id: int, data: bytes) -> None:
    out = sys.stderr.buffer if stream_id == STDERR else sys.stdout.buffer
    out.write(data)
    out.flush()


@click.command("logs")
@click.argument("ref", metavar="SERVICE|TASK")
@click.option("--follow", "-f", is_flag=True, help="Follow log output.")
@click.option("--tail", default="all", show_default=True, help="Number of lines from the end of each task's log.")
@click.option("--timestamps", "-t", is_flag=True, help="Show timestamps.")
@click.option("--since", default="", help="Only logs since a time (2026-01-02T10:00:00Z) or a duration (10m).")
@click.option("--no-task-ids", is_flag=True, help="Do not include task IDs in the output.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate task IDs.")
@click.option("--details", is_flag=True, help="Show the extra details of each line.")
@click.option("--raw", is_flag=True, help="Print the lines as the daemon sends them (no prefixes).")
@click.pass_context
def logs(ctx: click.Context, ref: str, follow: bool, tail: str, timestamps: bool, since: str, no_task_ids: bool,
         no_trunc: bool, details: bool, raw: bool) -> None:
    """Fetch the logs of a service or a task."""
    if tail != "all" and not tail.lstrip("-").isdigit():
        raise click.BadParameter(f"{tail!r} is not a number of lines or \"all\"", param_hint="--tail")
    since_param = since_seconds(since) if since else None

    async def go(client: DaemonClient) -> bool:
        path, _, tty, width = await _resolve(client, ref)
        if tty and not raw:
            fail("tty service logs only supported with --raw")
        params = {"stdout": True, "stderr": True, "tail": tail, "follow": follow, "timestamps": timestamps,
                  "details": details or not raw, "since": since_param}
        prefixer = LinePrefixer(client, task_ids=not no_task_ids, no_trunc=no_trunc, width=width)
        rest, ok = b"", True
        async for chunk in client.stream("GET", path, params=params):
            if tty:
                _write(1, chunk)
                continue
            frames, rest = parse_frames(rest + chunk)
            for stream_id, payload in frames:
                if stream_id == SYSTEM_ERROR:
                    sys.stderr.write(f"error from daemon in stream: {payload.decode(errors='replace').strip()}\n")
                    ok = False
                    continue
                _write(stream_id, payload if raw else await _pretty(prefixer, payload, timestamps, details))
        return ok

    if not with_client(ctx, go):
        raise SystemExit(1)


async def _pretty(prefixer: LinePrefixer, payload: bytes, timestamps: bool, show_details: bool) -> bytes:
    """`[<ts> ]<details> <msg>` → `[<ts> ]<prefix>[<details> ]<msg>`."""
    parts = payload.split(b" ", 2 if timestamps else 1)
    if len(parts) != (3 if timestamps else 2):
        raise ApiResponseError(500, f"invalid context in log message: {payload!r}")
    stamp = parts[0] + b" " if timestamps else b""
    raw_details, message = parts[-2], parts[-1]
    try:
        context = parse_details(raw_details.decode())
        prefix = await prefixer.prefix(context)
    except ValueError as e:
        raise ApiResponseError(500, str(e)) from None
    extra = b""
    if show_details:
        shown = {k: v for k, v in context.items() if not k.startswith("com.docker.swarm.")}
        extra = ",".join(f"{k}={v}" for k, v in shown.items()).encode() + b" " if shown else b""
    return stamp + prefix.encode() + extra + message
