"""The `testbed` fixture: two hosts with an OverlayHost each, torn down by name (support.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.overlay.support import TwoHosts, make_underlay, mounts_below, off_loop, unmount_below


@pytest.fixture
async def testbed() -> AsyncIterator[TwoHosts]:
    root = Path(tempfile.mkdtemp(prefix="shoal-ov-"))
    bed: TwoHosts | None = None
    try:
        a, b = off_loop(make_underlay, root)
        bed = TwoHosts(root, a, b)
        await bed.start(a)
        await bed.start(b)
        yield bed
    finally:
        if bed is not None:
            await bed.close()
        unmount_below(root)
        left = mounts_below(root)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"mounts left behind: {left}"
