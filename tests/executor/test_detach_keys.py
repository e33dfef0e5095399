"""Detach keys as dockerd reads them, and the scanner that finds them in a TTY's input."""

from __future__ import annotations

import pytest

from worker.executor.detach_keys import DEFAULT, EscapeScanner, parse


def test_parse_as_dockerd() -> None:
    assert parse(DEFAULT) == b"\x10\x11"
    assert parse("ctrl-@,ctrl-a,ctrl-z,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_,DEL,a") == bytes(
        [0, 1, 26, 27, 28, 29, 30, 31, 127, 97])
    for bad in ("ctrl-pq", "ctrl-1", "ab", "", "a,,b"):
        with pytest.raises(ValueError, match="Unknown character"):
            parse(bad)


def test_scanner_holds_a_partial_sequence_and_releases_a_broken_one() -> None:
    s = EscapeScanner(b"\x10\x11")
    assert s.feed(b"ab\x10") == (b"ab", False)          # held: it may start the sequence
    assert s.feed(b"c") == (b"\x10c", False)            # broken: it goes through
    assert s.feed(b"\x10\x10") == (b"\x10", False)      # the second may start it again
    assert s.feed(b"\x11tail") == (b"", True)           # complete: detach, the rest is dropped
    s = EscapeScanner(b"\x01d")
    assert s.feed(b"x\x01dy") == (b"x", True)
