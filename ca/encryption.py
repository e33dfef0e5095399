"""Encryption at rest of a node's swarm data: the data key (DEK), the unlock key, and their file.

Theory of operation. Each node has one random 256-bit data key. It encrypts the Raft log and
snapshots (as a `DataKey`, the record cipher raft/ takes: AES-256-GCM, a fresh 96-bit nonce per
record) and, through a password derived from it, the node's TLS private key and, on a manager,
the root CA key (PKCS#8 encrypted PEM, which OpenSSL loads with that password).

The data key lives in `<data-dir>/swarm/certificates/swarm-dek.json`:
- without autolock it is stored there in the clear, beside the data it protects (Docker's
  "encryption at rest" without a user key: it protects copies of the log, not the disk);
- with autolock it is stored only wrapped (AES-256-GCM) by a key-encryption key derived from the
  unlock key the user holds (`SWMKEY-1-<base64 of 32 random bytes>`, Docker's format). A
  restarted node then cannot read its data until it is given the unlock key: it is locked.

A data key is a key ring: records are sealed with its newest key and opened with whichever of
its keys sealed them. Turning autolock on rotates it (as Docker does, since the old key was on disk
in the clear): the new key is added, written (wrapped) before any record is sealed with it, and
the older keys stay in the ring (wrapped too) for the records and snapshot sealed before. The
password of the private keys derives from the ring's first key, so it never changes (the TLS key
itself is what an old copy of the disk exposed; a new certificate's key is what replaces it).

Invariants: with autolock the data key is never written in the clear; the key file is replaced
atomically, so a crash leaves the old wrapping or the new one, either of which opens the node
with the key it was written for; a key is in the file before any record is sealed with it; a
wrong unlock key is told apart from a damaged file by the AEAD tag, and both are refused without
touching anything.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

UNLOCK_KEY_PREFIX = "SWMKEY-1-"
DEK_FILE = "swarm-dek.json"
_VERSION = 1
_NONCE = 12
_KEY = 32
_RECORD_VERSION = b"\x01"


class InvalidUnlockKey(Exception):
    """The text is not an unlock key (Docker: "invalid key string")."""


class WrongUnlockKey(Exception):
    """A well-formed unlock key that does not open this node's data key."""


class KeyFileError(Exception):
    """The data key file is missing fields or damaged."""


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"shoal " + purpose).derive(secret)


def _record_aead(key: bytes) -> AESGCM:
    if len(key) != _KEY:
        raise ValueError(f"a data key is {_KEY} bytes")
    return AESGCM(_derive(key, b"raft records"))


class DataKey:
    """A node's data key ring: the record cipher of its Raft storage (sealing with the newest key,
    opening with any), and the password of its private keys. Thread-safe: the storage seals and
    opens on worker threads while `rotate` may run on the event loop."""

    def __init__(self, key: bytes, previous: Sequence[bytes] = ()) -> None:
        self.keys: list[bytes] = [key, *previous]            # newest first
        self._aeads = [_record_aead(k) for k in self.keys]

    @classmethod
    def generate(cls) -> DataKey:
        return cls(os.urandom(_KEY))

    @property
    def key(self) -> bytes:
        return self.keys[0]

    def rotate(self, new_key: bytes) -> None:
        """Seal with `new_key` from now on (it must already be in the key file: see the module)."""
        aeads, keys = [_record_aead(new_key), *self._aeads], [new_key, *self.keys]
        self._aeads, self.keys = aeads, keys      # each swap is atomic; readers see old or new lists

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return _RECORD_VERSION + nonce + self._aeads[0].encrypt(nonce, plaintext, _RECORD_VERSION)

    def open(self, sealed: bytes) -> bytes:
        if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _RECORD_VERSION:
            raise ValueError("not a sealed record of a known version")
        for aead in self._aeads:
            try:
                return aead.decrypt(sealed[1:1 + _NONCE], sealed[1 + _NONCE:], _RECORD_VERSION)
            except InvalidTag:
                continue
        raise ValueError("authentication failed (another data key, or damaged)")

    @property
    def key_password(self) -> bytes:
        """The password of the node's PEM private keys on disk (from the ring's first key)."""
        return base64.b64encode(_derive(self.keys[-1], b"node keys"))


# ---- unlock keys ----------------------------------------------------------------------------------

def new_unlock_key() -> str:
    return UNLOCK_KEY_PREFIX + base64.b64encode(os.urandom(32)).decode().rstrip("=")


def parse_unlock_key(text: str) -> bytes:
    """The key bytes of `SWMKEY-1-<base64>`; InvalidUnlockKey for anything else (as dockerd, a
    well-formed key of another length is not refused here: it just opens nothing)."""
    text = text.strip()
    if not text.startswith(UNLOCK_KEY_PREFIX):
        raise InvalidUnlockKey("invalid key string")
    body = text[len(UNLOCK_KEY_PREFIX):]
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidUnlockKey("invalid key string") from None
    return raw


def _kek(unlock_key: str) -> AESGCM:
    return AESGCM(_derive(parse_unlock_key(unlock_key), b"data key wrapping"))


# ---- the key file -----------------------------------------------------------------------------------

@dataclass
class KeyFile:
    """What `swarm-dek.json` holds: the data key in the clear, or wrapped by an unlock key."""

    keys: list[bytes] = field(default_factory=list)   # the ring in the clear, newest first (no autolock)
    wrapped: bytes | None = None     # nonce | AES-GCM(KEK, the ring's keys concatenated) (autolock)

    @property
    def locked(self) -> bool:
        return self.wrapped is not None

    @staticmethod
    def path(certs_dir: Path) -> Path:
        return certs_dir / DEK_FILE

    @classmethod
    def load(cls, certs_dir: Path) -> KeyFile | None:
        try:
            doc = json.loads(cls.path(certs_dir).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise KeyFileError(f"{cls.path(certs_dir)}: {e}") from None
        try:
            if doc.get("Version") != _VERSION:
                raise KeyFileError(f"{cls.path(certs_dir)}: unknown version {doc.get('Version')!r}")
            if doc.get("WrappedDEK"):
                return cls(wrapped=base64.b64decode(doc["WrappedDEK"]))
            return cls(keys=[base64.b64decode(k) for k in [doc["DEK"], *doc.get("PreviousDEKs", [])]])
        except (KeyError, TypeError, binascii.Error, AttributeError) as e:
            raise KeyFileError(f"{cls.path(certs_dir)}: {e!r}") from None

    def open(self, unlock_key: str | None = None) -> DataKey:
        """The data key; for a locked file, `unlock_key` must be the key it was wrapped with."""
        if self.wrapped is None:
            keys = self.keys
        else:
            if not unlock_key:
                raise WrongUnlockKey("the data key is locked and no unlock key was given")
            nonce, body = self.wrapped[:_NONCE], self.wrapped[_NONCE:]
            try:
                ring = _kek(unlock_key).decrypt(nonce, body, DEK_FILE.encode())
            except InvalidTag:
                raise WrongUnlockKey("swarm could not be unlocked: invalid key provided") from None
            keys = [ring[i:i + _KEY] for i in range(0, len(ring), _KEY)]
        if not keys or any(len(k) != _KEY for k in keys):
            raise KeyFileError("the data key file holds no valid key")
        return DataKey(keys[0], keys[1:])

    @classmethod
    def for_key(cls, dek: DataKey, unlock_key: str = "", *, rotate_to: bytes | None = None) -> KeyFile:
        """The file for `dek` (plus `rotate_to` as its newest key, when given): in the clear without
        an unlock key, else wrapped by it."""
        keys = ([rotate_to] if rotate_to is not None else []) + dek.keys
        if not unlock_key:
            return cls(keys=keys)
        nonce = os.urandom(_NONCE)
        return cls(wrapped=nonce + _kek(unlock_key).encrypt(nonce, b"".join(keys), DEK_FILE.encode()))

    def encode(self) -> bytes:
        """The file's content (written atomically, mode 0600, by ca/node_tls.save_key_file)."""
        doc: dict[str, object] = {"Version": _VERSION}
        if self.wrapped is not None:
            doc["WrappedDEK"] = base64.b64encode(self.wrapped).decode()
        else:
            doc["DEK"] = base64.b64encode(self.keys[0]).decode()
            doc["PreviousDEKs"] = [base64.b64encode(k).decode() for k in self.keys[1:]]
        return json.dumps(doc).encode()


# ---- PEM private keys under the data key's password ------------------------------------------------

def is_encrypted_pem(pem: bytes) -> bool:
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem


def seal_private_key(pem: bytes, password: bytes) -> bytes:
    """A PEM private key re-encoded as encrypted PKCS#8 under `password`."""
    key = serialization.load_pem_private_key(pem, None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(password))


def open_private_key(pem: bytes, password: bytes | None) -> bytes:
    """The plain PEM (traditional format kept as it was) of a key that may be encrypted."""
    if not is_encrypted_pem(pem):
        return pem
    if password is None:
        raise KeyFileError("the private key is encrypted and the node's data key is not loaded (locked?)")
    key = serialization.load_pem_private_key(pem, password)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
