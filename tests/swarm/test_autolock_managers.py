"""Autolock on three managers (slow: a 3-manager lab and several daemon restarts).

`swarm update --autolock=true` reaches every manager through Raft and each wraps its own data key
with the replicated unlock key; the secret's plaintext is on none of their disks. A manager that
is down while the key is rotated still has its data key wrapped by the previous key: as in
Docker, the previous key unlocks it (the new one does not), and once it runs it re-wraps with the
new key, which then unlocks it after another restart.
"""

from __future__ import annotations

import base64
import sys
from functools import partial
from pathlib import Path

import pytest

from ca.encryption import KeyFile, WrongUnlockKey
from cli.lab import Lab
from tests.swarm.helpers import api, api_error, eventually
from tests.swarm.test_autolock import disk_files

TEXT = "s3cret-on-three-managers-9e4a"
MANAGERS = ("manager-1", "manager-2", "manager-3")


def wrapped_by(lab: Lab, host: str, key: str) -> bool:
    key_file = KeyFile.load(Path(lab.node(host).data_dir) / "swarm" / "certificates")
    if key_file is None or not key_file.locked:
        return False
    try:
        key_file.open(key)
    except WrongUnlockKey:
        return False
    return True


def unlock_key(lab: Lab, via: str) -> str:
    return str(api(lab, via, "GET", "/swarm/unlockkey")["UnlockKey"])


@pytest.mark.slow
def test_every_manager_wraps_its_key_and_a_manager_down_during_rotation_opens_with_the_old_key(make_lab) -> None:
    lab: Lab = make_lab(managers=3, workers=0, swarm=True)
    api(lab, "manager-1", "POST", "/secrets/create",
        {"Name": "three", "Data": base64.b64encode(TEXT.encode()).decode()})
    proc = lab.exec("manager-2", [sys.executable, "-m", "cli.main", "swarm", "update", "--autolock=true"], timeout=30)
    assert proc.returncode == 0, proc.stderr
    key_1 = unlock_key(lab, "manager-1")
    assert key_1 in proc.stdout
    for host in MANAGERS:
        eventually(partial(wrapped_by, lab, host, key_1), what=f"{host}'s data key wrapped by the unlock key")
        files = list(disk_files(Path(lab.node(host).data_dir)))
        assert not [p for p in files if TEXT.encode() in p.read_bytes()], host

    lab.stop("manager-3")
    proc = lab.exec("manager-1", [sys.executable, "-m", "cli.main", "swarm", "unlock-key", "--rotate", "-q"],
                    timeout=30)
    assert proc.returncode == 0, proc.stderr
    key_2 = proc.stdout.strip()
    assert key_2 != key_1
    for host in ("manager-1", "manager-2"):
        eventually(partial(wrapped_by, lab, host, key_2), what=f"{host}'s data key re-wrapped by the new key")
    assert wrapped_by(lab, "manager-3", key_1)

    lab.start("manager-3")
    assert api(lab, "manager-3", "GET", "/info")["Swarm"]["LocalNodeState"] == "locked"
    assert api_error(lab, "manager-3", "POST", "/swarm/unlock", {"UnlockKey": key_2}).status == 401
    api(lab, "manager-3", "POST", "/swarm/unlock", {"UnlockKey": key_1})
    eventually(lambda: wrapped_by(lab, "manager-3", key_2), timeout=30,
               what="manager-3 re-wrapping its data key once it learns the new key")

    lab.restart("manager-3")
    api(lab, "manager-3", "POST", "/swarm/unlock", {"UnlockKey": key_2})
    eventually(lambda: [s for s in api(lab, "manager-3", "GET", "/secrets") if s["Spec"]["Name"] == "three"],
               timeout=30, what="manager-3 serving the cluster after its unlock")
