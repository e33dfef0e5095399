"""A node's TLS material on disk and the SSL contexts built from it.

Files under `<data-dir>/swarm/certificates/`: `swarm-root-ca.crt`, `swarm-node.crt`,
`swarm-node.key` (mode 0600), and on managers `swarm-root-ca.key`. Every write goes to a temp
file that is fsynced and renamed, so a crash never leaves half a certificate. Contexts verify
peers against the swarm's root only; identity (node ID, role) comes from the certificate
subject, never from host names, so `check_hostname` is off.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ca.authority import BACKDATE, NodeIdentity, RootCA, identity_of

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
    def save(self, directory: Path) -> None:
        write_atomic(directory / ROOT_CERT, self.root_pem)
        write_atomic(directory / NODE_KEY, self.key_pem, 0o600)
        write_atomic(directory / NODE_CERT, self.cert_pem)
        if self.root_key_pem is not None:
            write_atomic(directory / ROOT_KEY, self.root_key_pem, 0o600)
        else:
            (directory / ROOT_KEY).unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path) -> NodeCredentials | None:
        try:
            root_key = (directory / ROOT_KEY).read_bytes() if (directory / ROOT_KEY).exists() else None
            return cls((directory / ROOT_CERT).read_bytes(), (directory / NODE_CERT).read_bytes(),
                       (directory / NODE_KEY).read_bytes(), root_key)
        except FileNotFoundError:
            return None

    # ---- contexts -----------------------------------------------------------------------------
    def _load_chain(self, ctx: ssl.SSLContext, directory: Path) -> None:
        ctx.load_cert_chain(str(directory / NODE_CERT), str(directory / NODE_KEY))

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
