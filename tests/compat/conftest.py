"""The lab the docker-CLI tests drive: 1 manager + 1 worker in a swarm, the busybox test image
loaded on both; the docker CLI must be installed (deploy/install.sh installs it)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.lab import Lab
from tests.swarm.helpers import load_busybox_everywhere


@pytest.fixture
def docker_lab(make_lab: Callable[..., Lab], tmp_path: Path) -> Lab:
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is not installed (deploy/install.sh installs it)")
    lab = make_lab(managers=1, workers=1, swarm=True)
    load_busybox_everywhere(lab, tmp_path)
    return lab
