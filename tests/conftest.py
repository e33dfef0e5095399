"""Suite-wide test configuration: the `--slow` flag and the lab fixture."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from cli.lab import Lab


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run soak, chaos and scale tests (marked slow)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


_lab_counter = itertools.count(1)


# Where a failed lab test's daemon logs are kept (the lab's own run dir goes at teardown).
FAILED_LAB_LOGS = Path(os.environ.get("SHOAL_FAILED_LAB_LOGS", "/tmp/shoal-failed-labs"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None],
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_failed_key] = True
        # a lab a module shares (a fixture yielding the Lab itself) is kept now, while it runs;
        # make_lab's are kept at their teardown
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Lab):
                _keep_logs(value, item.name)
    return report


_failed_key = pytest.StashKey[bool]()


def _keep_logs(lab: Lab, test_name: str) -> None:
    dumping = {}
    for node in lab.nodes.values():  # live daemons dump their stacks into their logs first
        if node.pid and Path(f"/proc/{node.pid}").exists():
            with contextlib.suppress(OSError):
                size = Path(node.log).stat().st_size
                os.kill(node.pid, signal.SIGUSR1)
                dumping[node.log] = size
    deadline = time.monotonic() + 2
    while dumping and time.monotonic() < deadline:  # until every log has grown by its dump
        dumping = {log: size for log, size in dumping.items() if Path(log).stat().st_size == size}
        time.sleep(0.05)
    target = FAILED_LAB_LOGS / f"{test_name}-{lab.name}"
    target.mkdir(parents=True, exist_ok=True)
    for log in lab.run_dir.glob("*.log"):
        shutil.copy2(log, target / log.name)
    for node in lab.nodes.values():      # and what each host's namespaces hold (nft, conntrack, routes)
        sandboxes = sorted((Path(node.data_dir) / "network" / "netns").glob("*"))
        namespaces = [(node.name, f"/run/netns/{node.ns}"), *((p.name, str(p)) for p in sandboxes)]
        (target / f"{node.name}.netstate").write_text("".join(_net_state(*ns) for ns in namespaces))


def _net_state(name: str, path: str) -> str:
    """One namespace's nftables ruleset, conntrack entries, rules, routes, neighbours, bridge
    forwarding entries, addresses and TCP/IP counters (PAWS drops, retransmissions, resets), as
    text (each command bounded)."""
    out = [f"===== {name} ({path})\n"]
    for argv in (["nft", "list", "ruleset"], ["cat", "/proc/net/nf_conntrack"], ["ip", "rule"],
                 ["ip", "route", "show", "table", "all"], ["ip", "neigh"], ["bridge", "fdb", "show"],
                 ["ip", "-d", "addr"], ["cat", "/proc/net/netstat", "/proc/net/snmp"]):
        try:
            proc = subprocess.run(["nsenter", f"--net={path}", "--", *argv], capture_output=True, text=True,
                                  timeout=10)
            out.append(f"--- {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
        except (OSError, subprocess.SubprocessError) as exc:
            out.append(f"--- {' '.join(argv)}: {exc}\n")
    return "".join(out)


@pytest.fixture
def make_lab(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
    """A factory for labs that are always torn down, named uniquely for this test process.

    The returned Lab has the helpers tests use: kill(node) (SIGKILL), restart(node),
    partition(a, b) / heal(), exec(node, argv), plus stop/start and wait_ready.
    """
    needs_root()
    labs: list[Lab] = []

    def make(managers: int = 1, workers: int = 0, swarm: bool = False) -> Lab:
        name = f"t{os.getpid() % 100000:05d}{next(_lab_counter):02d}"
        lab = Lab(name)
        labs.append(lab)
        lab.up(managers=managers, workers=workers, swarm=swarm)
        return lab

    yield make
    failed = request.node.stash.get(_failed_key, False)
    for lab in labs:
        if failed:
            _keep_logs(lab, request.node.name)
        lab.down()
