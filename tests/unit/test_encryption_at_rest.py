"""Encryption at rest: the sealed WAL and snapshot files, the data key file, unlock keys, and the
node's private keys encrypted under the data key's password (OpenSSL loads them)."""

from __future__ import annotations

import base64
import os
import ssl
from pathlib import Path

import pytest

from ca.authority import NodeIdentity, RootCA, key_pem, make_csr, new_key
from ca.encryption import (
    DataKey,
    InvalidUnlockKey,
    KeyFile,
    KeyFileError,
    WrongUnlockKey,
    new_unlock_key,
    parse_unlock_key,
)
from ca.node_tls import NODE_KEY, ROOT_KEY, NodeCredentials, save_key_file
from node.autolock import NodeKeys
from raft.storage import DiskStorage, StorageCorruptError
from raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from raft.wal import WAL, WALCorruptError

SECRET = b"the-plaintext-of-a-secret-42"


def files_under(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(root) for f in names]


def test_sealed_wal_and_snapshot_hold_no_plaintext_and_reopen_only_with_the_key(tmp_path: Path) -> None:
    dek = DataKey.generate()
    storage = DiskStorage(str(tmp_path), cipher=dek)
    storage.load()
    storage.save(HardState(1, 1, 2), [Entry(1, i, data=SECRET + bytes([i])) for i in (1, 2)])
    storage.save_snapshot(Snapshot(SnapshotMeta(2, 1, ConfState(voters=(1,))), SECRET))
    storage.save(None, [Entry(1, 3, data=SECRET)])
    storage.close()
    assert all(SECRET not in p.read_bytes() for p in files_under(tmp_path))

    again = DiskStorage(str(tmp_path), cipher=dek)
    loaded = again.load()
    again.close()
    assert loaded.snapshot is not None and loaded.snapshot.data == SECRET
    assert [e.data for e in loaded.entries] == [SECRET]

    with pytest.raises(StorageCorruptError, match="encrypted"):
        DiskStorage(str(tmp_path)).load()            # no key: refused, never misread
    other = DiskStorage(str(tmp_path), cipher=DataKey.generate())
    with pytest.raises(StorageCorruptError, match="cannot decrypt"):
        other.load()


def test_a_plain_data_dir_opens_with_a_key_and_new_records_are_sealed(tmp_path: Path) -> None:
    """A data dir from before encryption at rest: its plain snapshot, checkpoint and records are read."""
    old = DiskStorage(str(tmp_path))
    old.load()
    old.save(HardState(1, 1, 0), [Entry(1, 1, data=b"in-the-snapshot")])
    old.save_snapshot(Snapshot(SnapshotMeta(1, 1, ConfState(voters=(1,))), b"plain-snapshot"))
    old.close()
    plain = WAL(str(tmp_path / "wal"))
    plain.open()
    plain.save(HardState(1, 1, 1), [Entry(1, 2, data=b"old-plain-record")])
    plain.close()
    dek = DataKey.generate()
    storage = DiskStorage(str(tmp_path), cipher=dek)
    loaded = storage.load()
    storage.close()
    assert loaded.snapshot is not None and loaded.snapshot.data == b"plain-snapshot"
    assert [e.data for e in loaded.entries] == [b"old-plain-record"]
    wal_dir = str(tmp_path / "wal")
    sealed = WAL(wal_dir, cipher=dek)
    assert [e.data for e in sealed.open().entries][-1:] == [b"old-plain-record"]
    sealed.save(HardState(1, 1, 2), [Entry(1, 3, data=SECRET)])
    sealed.close()
    raw = b"".join(p.read_bytes() for p in files_under(Path(wal_dir)))
    assert b"old-plain-record" in raw and SECRET not in raw
    reopened = WAL(wal_dir, cipher=dek)
    assert [e.data for e in reopened.open().entries][-2:] == [b"old-plain-record", SECRET]
    reopened.close()
    with pytest.raises(WALCorruptError, match="without a key"):
        WAL(wal_dir).open()


def test_unlock_keys_and_the_key_file(tmp_path: Path) -> None:
    key = new_unlock_key()
    assert key.startswith("SWMKEY-1-") and len(parse_unlock_key(key)) == 32
    for bad in ("", "SWMTKN-1-abc", "SWMKEY-1-!!!", "SWMKEY-1-A"):
        with pytest.raises(InvalidUnlockKey, match="invalid key string"):
            parse_unlock_key(bad)
    dek = DataKey.generate()
    save_key_file(tmp_path, KeyFile.for_key(dek, key))
    text = KeyFile.path(tmp_path).read_bytes()
    assert base64.b64encode(dek.key) not in text and b'"DEK"' not in text
    loaded = KeyFile.load(tmp_path)
    assert loaded is not None and loaded.locked
    assert loaded.open(key).key == dek.key
    for wrong in (new_unlock_key(), "SWMKEY-1-" + "A" * 10):     # well formed, another key or length
        with pytest.raises(WrongUnlockKey, match="invalid key provided"):
            loaded.open(wrong)
    save_key_file(tmp_path, KeyFile.for_key(dek))          # autolock off: in the clear
    unlocked = KeyFile.load(tmp_path)
    assert unlocked is not None and not unlocked.locked and unlocked.open().key == dek.key
    KeyFile.path(tmp_path).write_text("{not json")
    with pytest.raises(KeyFileError):
        KeyFile.load(tmp_path)


def test_private_keys_are_encrypted_on_disk_and_load_into_tls_contexts(tmp_path: Path) -> None:
    ca = RootCA.create("cluster")
    key = new_key()
    cert = ca.issue(make_csr(key), NodeIdentity("node1", "manager", "cluster"))
    assert ca.key is not None
    plain = NodeCredentials(ca.cert_pem, cert, key_pem(key), key_pem(ca.key))
    plain.save(tmp_path)                             # as a data dir from before encryption at rest
    password = DataKey.generate().key_password
    migrated = NodeCredentials.load(tmp_path, password)
    assert migrated is not None and migrated.seal_on_disk(tmp_path)
    for name in (NODE_KEY, ROOT_KEY):
        assert (tmp_path / name).read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert not migrated.seal_on_disk(tmp_path)
    with pytest.raises(KeyFileError, match="encrypted"):
        NodeCredentials.load(tmp_path)
    again = NodeCredentials.load(tmp_path, password)
    assert again is not None and again.key_pem == plain.key_pem and again.root_key_pem == plain.root_key_pem
    assert isinstance(again.server_context(tmp_path), ssl.SSLContext)
    assert isinstance(again.client_context(tmp_path), ssl.SSLContext)


def test_a_key_in_the_clear_is_rotated_when_it_gets_wrapped(tmp_path: Path) -> None:
    keys = NodeKeys(tmp_path)
    assert keys.load() and not key_file_locked(tmp_path)      # a fresh node: a data key in the clear
    dek = keys.dek
    assert dek is not None
    old_key, password = dek.key, dek.key_password
    before = dek.seal(SECRET)
    unlock = new_unlock_key()
    assert keys.wrap(unlock)                                  # autolock turned on: rotated
    assert dek.key != old_key and dek.key_password == password
    after = dek.seal(SECRET)
    with pytest.raises(ValueError):
        DataKey(old_key).open(after)                          # the key an old disk copy held reads nothing new
    loaded = KeyFile.load(tmp_path)
    assert loaded is not None and loaded.locked
    ring = loaded.open(unlock)
    assert ring.key == dek.key and ring.open(before) == ring.open(after) == SECRET
    second = new_unlock_key()
    assert keys.wrap(second) and dek.key == ring.key          # a new unlock key re-wraps, no rotation
    reopened = KeyFile.load(tmp_path)
    assert reopened is not None and reopened.open(second).keys == ring.keys
    assert keys.wrap("") and not key_file_locked(tmp_path)    # autolock off: the ring in the clear
    assert not keys.wrap("")


def key_file_locked(certs_dir: Path) -> bool:
    loaded = KeyFile.load(certs_dir)
    assert loaded is not None
    return loaded.locked
