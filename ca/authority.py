"""The root CA of a swarm and the certificates it issues.

A node certificate names the node and its role: CN = node ID, OU = `swarm-manager` or
`swarm-worker`, O = cluster ID. Peers authorise on these fields, so a worker's certificate can
never pass for a manager's. Keys are ECDSA P-256. The CA's key lives only on managers.

Root rotation (manager/swarm/ca_rotation.py): the old root cross-signs the new one (an
intermediate with the new root's subject and key); certificates the new root issues during the
rotation carry that intermediate after them, so a node trusting only the old root accepts them,
and a node trusting the new root builds its path to the new root directly (OpenSSL looks in the
trust store first). Roots made here have a unique subject (a random serial number attribute) and
a subject key identifier, and every issued certificate names its issuer's key, so two roots of
one swarm are never confused while building a chain.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from model.identity import NodeIdentity

ROLE_MANAGER = "swarm-manager"
ROLE_WORKER = "swarm-worker"
ROLE_OUS = {"manager": ROLE_MANAGER, "worker": ROLE_WORKER}
CA_VALIDITY = datetime.timedelta(days=20 * 365)
DEFAULT_NODE_CERT_EXPIRY = datetime.timedelta(days=90)
BACKDATE = datetime.timedelta(minutes=5)


CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateError(ValueError):
    """A certificate that does not name a node of this swarm, or a request that cannot be signed."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: CAKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("node key is not an ECDSA key")
    return key


def load_ca_key(pem: bytes) -> CAKey:
    """A CA's signing key: ECDSA or RSA, unencrypted PEM."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"invalid CA key: {e}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertificateError("CA key is neither an ECDSA nor an RSA key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certs(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in order (an empty or malformed bundle is an error)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise CertificateError(f"invalid certificate PEM: {e}") from None
    return certs


def bundle_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(cert_pem(c) for c in certs)


def public_key_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def issuer_info(issuer: x509.Certificate) -> dict[str, str]:
    """`CertIssuerSubject` and `CertIssuerPublicKey` of the Engine API's TLSInfo: base64 DER."""
    return {"CertIssuerSubject": base64.b64encode(issuer.subject.public_bytes()).decode(),
            "CertIssuerPublicKey": base64.b64encode(public_key_der(issuer)).decode()}


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, Exception):
        return False


def root_key_trusted(key: bytes, trust_pem: bytes) -> bool:
    """Whether a CA key (PEM) is the key of one of the roots of a trust bundle."""
    try:
        public = load_ca_key(key).public_key().public_bytes(serialization.Encoding.DER,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return any(public_key_der(c) == public for c in load_certs(trust_pem))
    except CertificateError:
        return False


def bundle_digest(trust_pem: str) -> str:
    """A short name for a trust bundle (what a node is asked to trust during a rotation)."""
    return hashlib.sha256(trust_pem.encode()).hexdigest()


def node_tls_info(chain_pem: bytes, trust_pem: bytes) -> dict[str, str]:
    """A node's TLSInfo: the roots it trusts, and the issuer of its certificate (the first of
    the chain), found among the rest of the chain and the trusted roots."""
    chain = load_certs(chain_pem)
    trusted = load_certs(trust_pem)
    leaf = chain[0]
    for candidate in [*chain[1:], *trusted]:
        if candidate.subject == leaf.issuer and signed_by(leaf, candidate):
            return {"TrustRoot": trust_pem.decode(), **issuer_info(candidate)}
    return {"TrustRoot": trust_pem.decode(), "CertIssuerSubject": "", "CertIssuerPublicKey": ""}


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR with no claims: the CA decides the node's identity, never the requester."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm-node")])
    ).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def identity_of(cert: x509.Certificate) -> NodeIdentity:
    def one(oid: x509.ObjectIdentifier) -> str:
        attrs = cert.subject.get_attributes_for_oid(oid)
        if len(attrs) != 1:
            raise CertificateError(f"certificate subject lacks {oid._name}")
        return str(attrs[0].value)

    ou = one(NameOID.ORGANIZATIONAL_UNIT_NAME)
    roles = {v: k for k, v in ROLE_OUS.items()}
    if ou not in roles:
        raise CertificateError(f"certificate has unknown role {ou!r}")
    return NodeIdentity(one(NameOID.COMMON_NAME), roles[ou], one(NameOID.ORGANIZATION_NAME))


_CA_USAGE = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)


class RootCA:
    """A CA that signs node certificates. `chain` is what an issued certificate carries after
    itself: during a root rotation, the new root cross-signed by the old one, so that a node
    that trusts only the old root still accepts it."""

    def __init__(self, cert: x509.Certificate, key: CAKey | None, chain: list[x509.Certificate] | None = None) -> None:
        self.cert = cert
        self.key = key
        self.chain = list(chain or [])

    @classmethod
    def create(cls, cluster_id: str) -> RootCA:
        """A new self-signed root. Its subject carries a random serial number, so two roots of
        one swarm (before and after a rotation) never share a name and chain building never
        mistakes one for the other."""
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm-ca"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
                          x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8))])
        now = datetime.datetime.now(datetime.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert: bytes, key: bytes | None = None) -> RootCA:
        return cls(x509.load_pem_x509_certificate(cert), load_ca_key(key) if key else None)

    @classmethod
    def from_user(cls, cert_pem_text: str, key_pem_text: str) -> RootCA:
        """A root the user supplies (`swarm ca --rotate --ca-cert --ca-key`): one CA
        certificate, valid now, and the private key of its public key."""
        certs = load_certs(cert_pem_text.encode())
        if len(certs) != 1:
            raise CertificateError(f"expected one CA certificate, got {len(certs)}")
        cert = certs[0]
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertificateError("the certificate is not a CA certificate (basic constraints CA:TRUE missing)")
        now = datetime.datetime.now(datetime.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateError("the CA certificate is expired or not yet valid")
        key = load_ca_key(key_pem_text.encode())
        if public_key_der(cert) != key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise CertificateError("the CA key does not match the CA certificate")
        return cls(cert, key)

    def cross_sign(self, new_root: x509.Certificate) -> x509.Certificate:
        """An intermediate with `new_root`'s subject and key, signed by this CA: a certificate
        the new root issues then chains up to this (old) root through it."""
        if self.key is None:
            raise CertificateError("this node holds no CA key and cannot cross-sign")
        now = datetime.datetime.now(datetime.UTC)
        not_after = min(new_root.not_valid_after_utc, self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder().subject_name(new_root.subject).issuer_name(self.cert.subject)
            .public_key(new_root.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(new_root.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        return builder.sign(self.key, hashes.SHA256())

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def tls_info(self) -> dict[str, str]:
        """The Engine API's `TLSInfo` of a swarm: the trust root and its issuer, base64 DER."""
        return {"TrustRoot": self.cert_pem.decode(), **issuer_info(self.cert)}

    def issue(self, csr_pem: bytes, identity: NodeIdentity, addresses: list[str] | None = None,
              expiry: datetime.timedelta = DEFAULT_NODE_CERT_EXPIRY) -> bytes:
        """Sign a CSR, stamping the identity the CA chose. Returns the certificate PEM, followed
        by the CA's chain (see the class)."""
        if self.key is None:
            raise CertificateError("this node holds no CA key and cannot issue certificates")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise CertificateError(f"invalid certificate signing request: {e}") from None
        if not csr.is_signature_valid:
            raise CertificateError("certificate signing request has a bad signature")
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, identity.node_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_OUS[identity.role]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.cluster_id),
        ])
        sans: list[x509.GeneralName] = [x509.DNSName(identity.node_id), x509.DNSName(ROLE_OUS[identity.role])]
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + expiry)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert_pem(cert) + bundle_pem(self.chain)

    def verify(self, cert: x509.Certificate, intermediates: list[x509.Certificate] | None = None) -> None:
        """Raise CertificateError unless `cert` was signed by this CA, directly or through one of
        `intermediates` that this CA signed (a cross-signed root during a rotation), and it and
        the intermediate are within validity."""
        now = datetime.datetime.now(datetime.UTC)
        path = [cert]
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, Exception) as e:
            via = [i for i in intermediates or [] if i.subject == cert.issuer and signed_by(cert, i)
                   and signed_by(i, self.cert)]
            if not via:
                raise CertificateError(f"certificate not issued by this swarm's CA: {e}") from None
            path.append(via[0])
        if any(not c.not_valid_before_utc <= now <= c.not_valid_after_utc for c in path):
            raise CertificateError("certificate is expired or not yet valid")
