"""Pure parts of the logs API and CLI: query parsing, Engine API timestamps, frames with
details, the end-of-stream notice, `--since` values and the CLI's line prefixes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cli.service_logs import LinePrefixer, _pretty, parse_details, since_seconds
from engineapi.http import ApiError
from engineapi.logframes import parse_frames
from manager.api.logs import LogQuery, docker_timestamp, incomplete_notice, parse_log_query, render
from manager.logbroker import LogOptions, LogRecord


def query(qs: str) -> LogQuery:
    return parse_log_query(make_mocked_request("GET", f"/services/x/logs?{qs}", app=web.Application()))


def test_query_parsing_follows_the_engine_api() -> None:
    q = query("stdout=1&stderr=1&tail=all&details=1&follow=1&timestamps=1&since=1700000000.250000000")
    assert (q.stdout, q.stderr, q.details, q.timestamps) == (True, True, True, True)
    assert q.options == LogOptions(follow=True, tail=None, since=1700000000.25)
    assert query("stdout=True&tail=5").options == LogOptions(tail=5)
    assert query("stdout=1&tail=-1&since=0").options == LogOptions()
    with pytest.raises(ApiError, match="you must choose at least one stream") as e:
        query("tail=5")
    assert e.value.status == 400
    with pytest.raises(ApiError, match="invalid tail value 'x'"):
        query("stdout=1&tail=x")
    with pytest.raises(ApiError, match="invalid since value"):
        query("stdout=1&since=yesterday")


def test_timestamps_are_utc_with_nine_fraction_digits() -> None:
    assert docker_timestamp("2026-01-02T03:04:05.123456789+00:00") == "2026-01-02T03:04:05.123456789Z"
    assert docker_timestamp("2026-01-02T04:04:05.5+01:00") == "2026-01-02T03:04:05.500000000Z"
    assert docker_timestamp("2026-01-02T03:04:05Z") == "2026-01-02T03:04:05.000000000Z"
    assert docker_timestamp("garbage") == "garbage"


RECORD = LogRecord("node1", "svc1", "task1", "2026-01-02T03:04:05.1+00:00", "stderr", b"hello world")


def test_frames_carry_timestamp_details_and_stream() -> None:
    q = query("stdout=1&stderr=1&details=1&timestamps=1")
    frames, rest = parse_frames(render(RECORD, q, framed=True))
    assert rest == b""
    assert frames == [(2, b"2026-01-02T03:04:05.100000000Z com.docker.swarm.node.id=node1,"
                          b"com.docker.swarm.service.id=svc1,com.docker.swarm.task.id=task1 hello world\n")]
    assert render(RECORD, query("stdout=1"), framed=True) == b""          # stderr not asked for
    assert render(RECORD, query("stderr=1"), framed=False) == b"hello world\n"
    frames, _ = parse_frames(incomplete_notice(["node n2 disconnected"], framed=True))
    assert frames[0][0] == 3 and b"incomplete log stream" in frames[0][1] and b"node n2 disconnected" in frames[0][1]


def test_since_accepts_durations_unix_seconds_and_rfc3339() -> None:
    assert since_seconds("10m", now=1000.0) == "400.000000000"
    assert since_seconds("1.5h", now=10000.0) == "4600.000000000"
    assert since_seconds("1700000000.5") == "1700000000.500000000"
    assert since_seconds("1970-01-01T00:01:00Z") == "60.000000000"
    with pytest.raises(Exception, match="is not a duration"):
        since_seconds("soon")


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def get(self, path: str, **params: Any) -> Any:
        self.calls.append(path)
        return {"/nodes/node1": {"Description": {"Hostname": "worker-1"}}, "/services/svc1": {"Spec": {"Name": "web"}},
                "/tasks/task1abcdefghijk": {"Slot": 2}}[path]


def test_cli_prefixes_lines_like_docker_and_looks_names_up_once() -> None:
    client = FakeClient()
    prefixer = LinePrefixer(client, task_ids=True, no_trunc=False, width=2)   # type: ignore[arg-type]
    details = ("com.docker.swarm.node.id=node1,com.docker.swarm.service.id=svc1,"
               "com.docker.swarm.task.id=task1abcdefghijk")

    async def go() -> tuple[bytes, bytes]:
        plain = await _pretty(prefixer, details.encode() + b" line 1\n", timestamps=False, show_details=False)
        stamped = await _pretty(prefixer, b"2026-01-02T03:04:05.000000000Z " + details.encode() + b" line 2\n",
                                timestamps=True, show_details=False)
        return plain, stamped

    plain, stamped = asyncio.run(go())
    assert plain == b"web.2.task1abcdefg@worker-1     | line 1\n"
    assert stamped == b"2026-01-02T03:04:05.000000000Z web.2.task1abcdefg@worker-1     | line 2\n"
    assert len(client.calls) == 3
    assert parse_details("a=b%20c,d=e") == {"a": "b c", "d": "e"}
    with pytest.raises(ValueError):
        parse_details("nokey")
