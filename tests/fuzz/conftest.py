"""Prints how many requests the API fuzzing made, and how many answers were server errors."""

from __future__ import annotations

import sys

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    fuzz = sys.modules.get("tests.fuzz.test_api_fuzz")
    tally = getattr(fuzz, "Tally", None)
    if tally is None or not tally.requests:
        return
    terminalreporter.write_line(
        f"schemathesis: {tally.requests} requests, {tally.server_errors} answers >= 500 "
        f"(dockerd's own: {tally.stale_version} 500 'update out of sequence', "
        f"{tally.already_in_swarm} 503 'already part of a swarm')")
