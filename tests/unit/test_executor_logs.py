"""Log parsing, partial-line assembly, framing, and the health tracker (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engineapi.logframes import frame, parse_frames
from worker.executor.health import HEALTHY, STARTING, UNHEALTHY, HealthTracker, ProbeResult
from worker.executor.logs import (
    LineAssembler,
    LogEntry,
    LogFormatError,
    format_entry,
    parse_line,
    read_log,
    timestamp_seconds,
)
from worker.executor.spec import Healthcheck

TS = "2026-01-02T03:04:05.123456789+00:00"


def test_parse_line() -> None:
    e = parse_line(f"{TS} stderr F hello world".encode())
    assert e == LogEntry(TS, "stderr", b"hello world") and e.stream_id == 2
    assert parse_line(f"{TS} stdout F ".encode()).message == b""
    assert parse_line(f"{TS} stdout P par".encode()).partial
    for bad in (b"garbage", f"{TS} stdin F x".encode(), f"{TS} stdout X x".encode()):
        with pytest.raises(LogFormatError):
            parse_line(bad)


def test_partials_join_per_stream() -> None:
    a = LineAssembler()
    assert a.feed(LogEntry(TS, "stdout", b"ab", partial=True)) is None
    assert a.feed(LogEntry(TS, "stderr", b"err")) == LogEntry(TS, "stderr", b"err")
    assert a.feed(LogEntry("later", "stdout", b"cd")) == LogEntry(TS, "stdout", b"abcd")


def test_frames() -> None:
    assert frame(1, b"hi\n") == b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"
    entry = LogEntry(TS, "stderr", b"msg")
    data = format_entry(entry, timestamps=True, details={"com.docker.swarm.node.id": "n1",
                                                          "com.docker.swarm.task.id": "t 1"})
    frames, rest = parse_frames(data + b"\x01\x00\x00")
    assert rest == b"\x01\x00\x00"
    assert frames == [(2, f"{TS} com.docker.swarm.node.id=n1,com.docker.swarm.task.id=t%201 msg\n".encode())]
    assert format_entry(entry) == frame(2, b"msg\n")


async def test_read_log_tail_and_torn_tail(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(b"".join(f"{TS} stdout F l{i}\n".encode() for i in range(5)) + f"{TS} stdo".encode())
    assert [e.message async for e in read_log(log)] == [b"l0", b"l1", b"l2", b"l3", b"l4"]
    assert [e.message async for e in read_log(log, tail=2)] == [b"l3", b"l4"]
    assert [e.message async for e in read_log(log, tail=0)] == []
    assert [e.message async for e in read_log(tmp_path / "missing")] == []


async def test_follow_ends_when_finished_and_drained(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(f"{TS} stdout F first\n".encode())
    checks = 0

    def finished() -> bool:
        nonlocal checks
        checks += 1
        if checks == 2:      # written while following, before the container is seen to exit
            with log.open("ab") as f:
                f.write(f"{TS} stdout F second\n".encode())
        return checks >= 3

    got = [e.message async for e in read_log(log, follow=True, finished=finished, poll_interval=0)]
    assert got == [b"first", b"second"]


async def test_follow_reads_what_was_written_before_the_container_and_its_log_were_removed(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(f"{TS} stdout F first\n".encode())
    checks = 0

    def finished() -> bool:     # the container exits, writes its last line, and is removed at once
        nonlocal checks
        checks += 1
        if checks == 1:
            with log.open("ab") as f:
                f.write(f"{TS} stdout F last\n".encode())
            log.unlink()
            return True
        return True

    got = [e.message async for e in read_log(log, follow=True, finished=finished, poll_interval=0)]
    assert got == [b"first", b"last"]


def probe(code: int) -> ProbeResult:
    return ProbeResult("s", "e", code, "out")


def test_health_tracker_transitions() -> None:
    t = HealthTracker(Healthcheck(test=["x"], retries=2, start_period=10))
    assert t.record(probe(1), elapsed=1) == STARTING        # ignored in the start period
    assert t.failing_streak == 0
    assert t.record(probe(0), elapsed=2) == HEALTHY
    assert t.record(probe(1), elapsed=3) == HEALTHY          # counted: no longer starting
    assert t.record(probe(1), elapsed=4) == UNHEALTHY
    assert t.record(probe(0), elapsed=5) == HEALTHY and t.failing_streak == 0
    late = HealthTracker(Healthcheck(test=["x"], retries=1, start_period=1))
    assert late.record(probe(1), elapsed=2) == UNHEALTHY
    engine = late.to_engine()
    assert engine["Status"] == "unhealthy" and engine["Log"][0]["ExitCode"] == 1


async def test_since_filters_by_timestamp(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(b"2026-01-01T00:00:00.5Z stdout F old\n"
                    b"2026-01-01T00:00:10.123456789+00:00 stdout F new\n")
    cut = timestamp_seconds("2026-01-01T00:00:05Z")
    assert [e.message async for e in read_log(log, since=cut)] == [b"new"]
    assert timestamp_seconds("2026-01-01T00:00:10.123456789+00:00") - cut == pytest.approx(5.123456, abs=1e-6)
    with pytest.raises(LogFormatError):
        timestamp_seconds("yesterday")
