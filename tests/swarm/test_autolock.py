"""Encryption at rest and autolock on a lab manager (a real daemon, restarted for real).

- Without autolock and with it, the plaintext of a secret created through the API is in no file
  of the manager's data directory on disk (WAL, snapshots, keys, state: every regular file, not
  crossing into the tmpfs the executor mounts for run state, which is memory).
- With autolock, a restarted manager is locked: `/_ping`, `/version` and `/info` answer (state
  "locked"), cluster calls get Docker's 503, a wrong key is refused with Docker's text, and the
  right one brings the swarm back with the secret still readable by the service's task.
- A rotated key unlocks after a restart and the previous one does not; with autolock turned off
  a restart is not locked.
- docker-py's autolock tests (api_swarm_test.py: init with autolock managers, rotate the manager
  unlock key, and its tearDown's unlock of a swarm that is not locked), rewritten for this lab.
"""

from __future__ import annotations

import base64
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from ca.encryption import KeyFile
from cli.lab import Lab
from node.autolock import LOCKED
from tests.swarm.helpers import api, api_error, converged, eventually, in_task, load_busybox_everywhere

MANAGER = "manager-1"
IMAGE = "busybox:latest"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from tests.conftest import needs_root

    needs_root()
    the_lab = Lab(f"al{os.getpid() % 100000:05d}")
    the_lab.down()
    try:
        the_lab.up(managers=1, workers=0, swarm=False)
        load_busybox_everywhere(the_lab, tmp_path_factory.mktemp("img"), IMAGE)
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture(autouse=True)
def fresh_swarm(lab: Lab) -> Iterator[None]:
    """Each test starts outside any swarm (leave --force also works on a locked manager)."""
    yield
    if local_state(lab) != "inactive":
        api(lab, MANAGER, "POST", "/swarm/leave", force="true")


def init(lab: Lab, autolock: bool) -> None:
    spec = {"EncryptionConfig": {"AutoLockManagers": autolock}}
    api(lab, MANAGER, "POST", "/swarm/init", {"ListenAddr": "0.0.0.0:2377",
                                              "AdvertiseAddr": lab.node(MANAGER).address, "Spec": spec})


def create_secret(lab: Lab, name: str, text: str) -> str:
    reply = api(lab, MANAGER, "POST", "/secrets/create",
                {"Name": name, "Data": base64.b64encode(text.encode()).decode()})
    return str(reply["ID"])


def create_service_with_secret(lab: Lab, name: str, secret_id: str) -> None:
    api(lab, MANAGER, "POST", "/services/create", {
        "Name": name, "Mode": {"Replicated": {"Replicas": 1}},
        "TaskTemplate": {"ContainerSpec": {
            "Image": IMAGE, "Command": ["sleep", "1000"],
            "Secrets": [{"SecretID": secret_id, "SecretName": "locked-at-rest",
                         "File": {"Name": "locked-at-rest", "UID": "0", "GID": "0", "Mode": 0o400}}]}}})


def disk_files(root: Path) -> Iterator[Path]:
    """Every regular file under `root` on root's own file system (as `find -xdev -type f`)."""
    device = root.stat().st_dev
    for directory, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(directory, d)).st_dev == device]
        for name in names:
            path = Path(directory, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:       # the daemon runs: a temporary file renamed meanwhile
                continue
            if st.st_dev == device and stat.S_ISREG(st.st_mode):
                yield path


def contents(path: Path) -> bytes:
    """The file's bytes; none if the running daemon renamed it away meanwhile (a temporary file
    of an atomic write: what it held is in the file it became)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def assert_nowhere_on_disk(lab: Lab, text: str) -> int:
    root = Path(lab.node(MANAGER).data_dir)
    files = list(disk_files(root))
    found = [str(p) for p in files if text.encode() in contents(p)]
    assert not found, f"the secret's plaintext is on disk in {found}"
    names = {p.name for p in files}
    assert {"swarm-node.key", "swarm-dek.json"} <= names and any(n.endswith(".wal") for n in names)
    return len(files)


def certs_dir(lab: Lab) -> Path:
    return Path(lab.node(MANAGER).data_dir) / "swarm" / "certificates"


def key_file(lab: Lab) -> KeyFile:
    loaded = KeyFile.load(certs_dir(lab))
    assert loaded is not None
    return loaded


def unlock_key(lab: Lab) -> str:
    return str(api(lab, MANAGER, "GET", "/swarm/unlockkey")["UnlockKey"])


def swarm_update(lab: Lab, change: Any = None, **params: str) -> None:
    cluster = api(lab, MANAGER, "GET", "/swarm")
    spec = cluster["Spec"]
    if change is not None:
        change(spec)
    api(lab, MANAGER, "POST", "/swarm/update", spec, version=str(cluster["Version"]["Index"]), **params)


def local_state(lab: Lab) -> str:
    return str(api(lab, MANAGER, "GET", "/info")["Swarm"]["LocalNodeState"])


def test_no_plaintext_on_disk_without_autolock(lab: Lab) -> None:
    init(lab, autolock=False)
    create_secret(lab, "plain-at-rest", "s3cret-without-autolock-5b1e")
    assert_nowhere_on_disk(lab, "s3cret-without-autolock-5b1e")
    assert not key_file(lab).locked          # the data key beside the data, as Docker without autolock
    assert (certs_dir(lab) / "swarm-node.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY")
    assert unlock_key(lab) == ""
    error = api_error(lab, MANAGER, "POST", "/swarm/unlock", {"UnlockKey": "SWMKEY-1-x"})
    assert (error.status, error.message) == (409, "swarm is not locked")


def test_locked_after_restart_until_unlocked_with_the_right_key(lab: Lab) -> None:
    text = "s3cret-with-autolock-c7d2"
    init(lab, autolock=True)
    key = unlock_key(lab)
    assert key.startswith("SWMKEY-1-") and key_file(lab).locked
    assert key.encode() not in (certs_dir(lab) / "swarm-dek.json").read_bytes()
    secret_id = create_secret(lab, "locked-at-rest", text)
    create_service_with_secret(lab, "reads-secret", secret_id)
    converged(lab, "reads-secret", 1)
    assert_nowhere_on_disk(lab, text)

    lab.restart(MANAGER)
    assert local_state(lab) == "locked"
    assert api(lab, MANAGER, "GET", "/version")["ApiVersion"]
    for path in ("/services", "/secrets", "/nodes", "/swarm", "/swarm/unlockkey"):
        error = api_error(lab, MANAGER, "GET", path)
        assert (error.status, error.message) == (503, LOCKED), path
    wrong = api_error(lab, MANAGER, "POST", "/swarm/unlock", {"UnlockKey": "SWMKEY-1-" + "A" * 43})
    assert (wrong.status, wrong.message) == (401, "swarm could not be unlocked: invalid key provided")
    malformed = api_error(lab, MANAGER, "POST", "/swarm/unlock", {"UnlockKey": "not-a-key"})
    assert (malformed.status, malformed.message) == (400, "invalid key string")
    leave = api_error(lab, MANAGER, "POST", "/swarm/leave")
    assert leave.status == 503 and "locked" in leave.message
    assert local_state(lab) == "locked"

    # The CLI reads the key from stdin when it is not a terminal, as `docker swarm unlock`.
    proc = lab.exec(MANAGER, ["sh", "-c", f'echo "{key}" | {sys.executable} -m cli.main swarm unlock'], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert local_state(lab) == "active"
    # A task made after the unlock gets the secret from the store the manager decrypted.
    create_service_with_secret(lab, "reads-secret-after-unlock", secret_id)
    task = converged(lab, "reads-secret-after-unlock", 1)[0]

    def read_secret() -> str | None:
        proc = in_task(lab, task, ["cat", "/run/secrets/locked-at-rest"])
        return proc.stdout if proc.returncode == 0 else None

    assert eventually(read_secret, what="the task to read its secret") == text
    again = lab.exec(MANAGER, [sys.executable, "-m", "cli.main", "swarm", "unlock"], timeout=30)
    assert again.returncode == 1 and again.stderr.strip() == "Error: swarm is not locked"


def test_rotated_key_unlocks_and_autolock_off_restarts_unlocked(lab: Lab) -> None:
    init(lab, autolock=True)
    old = unlock_key(lab)
    proc = lab.exec(MANAGER, [sys.executable, "-m", "cli.main", "swarm", "unlock-key", "--rotate", "-q"], timeout=30)
    assert proc.returncode == 0, proc.stderr
    new = proc.stdout.strip()
    assert new.startswith("SWMKEY-1-") and new != old and unlock_key(lab) == new
    eventually(lambda: key_file(lab).open(new), what="the data key re-wrapped by the new unlock key")

    lab.restart(MANAGER)
    assert local_state(lab) == "locked"
    assert api_error(lab, MANAGER, "POST", "/swarm/unlock", {"UnlockKey": old}).status == 401
    api(lab, MANAGER, "POST", "/swarm/unlock", {"UnlockKey": new})
    assert local_state(lab) == "active"

    proc = lab.exec(MANAGER, [sys.executable, "-m", "cli.main", "swarm", "update", "--autolock=false"], timeout=30)
    assert proc.returncode == 0 and proc.stdout == "Swarm updated.\n", proc.stderr
    assert unlock_key(lab) == ""
    eventually(lambda: not key_file(lab).locked, what="the data key stored in the clear again")
    lab.restart(MANAGER)
    assert local_state(lab) == "active"
    eventually(lambda: api(lab, MANAGER, "GET", "/swarm")["ID"], what="the manager to serve the swarm")
    proc = lab.exec(MANAGER, [sys.executable, "-m", "cli.main", "swarm", "update", "--autolock"], timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert unlock_key(lab) in proc.stdout and "shoal swarm unlock" in proc.stdout


def test_docker_py_autolock(lab: Lab) -> None:
    """docker-py's test_init_swarm_with_autolock_managers and test_rotate_manager_unlock_key, with
    their tearDown (unlock_swarm on a swarm that is not locked is an APIError, then leave)."""
    client = docker.APIClient(base_url=lab.node(MANAGER).host, version="1.44")
    try:
        spec = client.create_swarm_spec(autolock_managers=True)
        assert client.init_swarm(advertise_addr=lab.node(MANAGER).address, swarm_spec=spec)
        key_1 = client.get_unlock_key()
        assert client.inspect_swarm()["Spec"]["EncryptionConfig"]["AutoLockManagers"] is True
        assert key_1.get("UnlockKey")
        swarm_info = client.inspect_swarm()
        assert client.update_swarm(version=swarm_info["Version"]["Index"], rotate_manager_unlock_key=True)
        key_2 = client.get_unlock_key()
        assert key_1["UnlockKey"] != key_2["UnlockKey"]
        with pytest.raises(docker.errors.APIError) as info:
            client.unlock_swarm(key_2)
        assert info.value.status_code == 409
        assert client.leave_swarm(force=True)
    finally:
        client.close()
