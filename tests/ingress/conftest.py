"""The `net` fixture: this test's named namespaces, deleted by name afterwards (support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ingress.support import Net


@pytest.fixture
def net() -> Iterator[Net]:
    bed = Net()
    try:
        yield bed
    finally:
        bed.close()
