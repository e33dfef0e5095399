"""The VM test runs only when asked: `./deploy/test.sh --vm` sets SHOAL_VM_TEST=1.

Without it nothing here is even collected, so the default suite (and `--slow`) never boots a VM.
"""

from __future__ import annotations

import os

import pytest

collect_ignore_glob = [] if os.environ.get("SHOAL_VM_TEST") == "1" else ["test_*.py"]

REPORT_KEY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REPORT_KEY] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(REPORT_KEY, [])
    if lines:
        terminalreporter.section("VM lab: timings and memory")
        for line in lines:
            terminalreporter.write_line(line)
