"""Suite-wide test configuration: the `--slow` flag and the lab fixture."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

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


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
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
    for lab in labs:
        lab.down()
