"""A node's TLS material on disk and the SSL contexts built from it.

Files under `<data-dir>/swarm/certificates/`: `swarm-root-ca.crt`, `swarm-node.crt`,
`swarm-node.key` (mode 0600), and on managers `swarm-root-ca.key`. Every write goes to a temp
file that is fsynced and renamed, so a crash never leaves half a certificate. Contexts verify
peers against the swarm's root only; identity (node ID, role) comes from the certificate
subject, never from host names, so `check_hostname` is off.

Encryption at rest (ca/encryption.py): credentials that carry `key_password` (derived from the
node's data key) write both private keys as encrypted PKCS#8 and hand the password to OpenSSL when
a context loads them; in memory `key_pem` and `root_key_pem` are always plain. Plain key files
written before encryption are still read, and `seal_on_disk` rewrites them encrypted.
`swarm-dek.json` (the data key, in the clear or wrapped) lives in the same directory.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from ca.authority import BACKDATE, NodeIdentity, RootCA, identity_of
from ca.encryption import KeyFile, is_encrypted_pem, open_private_key, seal_private_key

ROOT_CERT = "swarm-root-ca.crt"
ROOT_KEY = "swarm-root-ca.key"
NODE_CERT = "swarm-node.crt"
NODE_KEY = "swarm-node.key"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class NodeCredentials:
    root_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    root_key_pem: bytes | None = None
    key_password: bytes | None = field(default=None, repr=False, compare=False)   # encrypts the keys on disk

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def identity(self) -> NodeIdentity:
        return identity_of(self.cert)

    @property
    def root(self) -> RootCA:
        return RootCA.from_pem(self.root_pem, self.root_key_pem)

    @property
    def lifetime(self) -> datetime.timedelta:
        """From issue to expiry (validity starts BACKDATE before issue, for clock skew)."""
        cert = self.cert
        return cert.not_valid_after_utc - (cert.not_valid_before_utc + BACKDATE)

    def renewal_due(self, now: datetime.datetime | None = None) -> bool:
        """True once less than half of the certificate's lifetime remains."""
        now = now or datetime.datetime.now(datetime.UTC)
        return now >= self.cert.not_valid_after_utc - self.lifetime / 2

    # ---- disk ---------------------------------------------------------------------------------
    def _on_disk(self, pem: bytes) -> bytes:
        return pem if self.key_password is None else seal_private_key(pem, self.key_password)

    def save(self, directory: Path) -> None:
        write_atomic(directory / ROOT_CERT, self.root_pem)
        write_atomic(directory / NODE_KEY, self._on_disk(self.key_pem), 0o600)
        write_atomic(directory / NODE_CERT, self.cert_pem)
        if self.root_key_pem is not None:
            write_atomic(directory / ROOT_KEY, self._on_disk(self.root_key_pem), 0o600)
        else:
            (directory / ROOT_KEY).unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path, key_password: bytes | None = None) -> NodeCredentials | None:
        """The credentials in `directory` (None if there are none); encrypted keys need the
        password (ca.encryption.KeyFileError without it)."""
        try:
            root_key = (directory / ROOT_KEY).read_bytes() if (directory / ROOT_KEY).exists() else None
            return cls((directory / ROOT_CERT).read_bytes(), (directory / NODE_CERT).read_bytes(),
                       open_private_key((directory / NODE_KEY).read_bytes(), key_password),
                       open_private_key(root_key, key_password) if root_key is not None else None,
                       key_password=key_password)
        except FileNotFoundError:
            return None

    def seal_on_disk(self, directory: Path) -> bool:
        """Rewrite plain key files encrypted (a data dir from before encryption at rest, or keys
        saved by a path that had no password); True if something was rewritten."""
        if self.key_password is None:
            return False
        names = [NODE_KEY] + ([ROOT_KEY] if self.root_key_pem is not None else [])
        if all(is_encrypted_pem((directory / name).read_bytes()) for name in names):
            return False
        self.save(directory)
        return True

    # ---- contexts -----------------------------------------------------------------------------
    def _load_chain(self, ctx: ssl.SSLContext, directory: Path) -> None:
        ctx.load_cert_chain(str(directory / NODE_CERT), str(directory / NODE_KEY), password=self.key_password)

    def server_context(self, directory: Path) -> ssl.SSLContext:
        """Peers may come without a certificate (joiners); one that shows a certificate must
        show one from this swarm's CA, or the handshake fails."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_chain(ctx, directory)
        ctx.load_verify_locations(cadata=self.root_pem.decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def client_context(self, directory: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.root_pem.decode())
        self._load_chain(ctx, directory)
        return ctx


def save_key_file(directory: Path, key_file: KeyFile) -> None:
    """Write the node's data key file (in the clear or wrapped) atomically, mode 0600."""
    write_atomic(KeyFile.path(directory), key_file.encode(), 0o600)


def bootstrap_client_context() -> ssl.SSLContext:
    """For a joiner that trusts nothing yet: it verifies the manager's CA against the token's
    digest and the manager's certificate against that CA itself, after the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> NodeIdentity | None:
    """The verified peer's identity, or None for a peer without a certificate."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return identity_of(x509.load_der_x509_certificate(der))
