"""The root CA of a swarm and the certificates it issues.

A node certificate names the node and its role: CN = node ID, OU = `swarm-manager` or
`swarm-worker`, O = cluster ID. Peers authorise on these fields, so a worker's certificate can
never pass for a manager's. Keys are ECDSA P-256. The CA's key lives only on managers.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from model.identity import NodeIdentity

ROLE_MANAGER = "swarm-manager"
ROLE_WORKER = "swarm-worker"
ROLE_OUS = {"manager": ROLE_MANAGER, "worker": ROLE_WORKER}
CA_VALIDITY = datetime.timedelta(days=20 * 365)
DEFAULT_NODE_CERT_EXPIRY = datetime.timedelta(days=90)
BACKDATE = datetime.timedelta(minutes=5)


class CertificateError(ValueError):
    """A certificate that does not name a node of this swarm, or a request that cannot be signed."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("node key is not an ECDSA key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


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


class RootCA:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, cluster_id: str) -> RootCA:
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm-ca"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert: bytes, key: bytes | None = None) -> RootCA:
        return cls(x509.load_pem_x509_certificate(cert), load_key(key) if key else None)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def tls_info(self) -> dict[str, str]:
        """The Engine API's `TLSInfo` of a swarm: the trust root and its issuer, base64 DER."""
        import base64

        public = self.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        return {"TrustRoot": self.cert_pem.decode(),
                "CertIssuerSubject": base64.b64encode(self.cert.subject.public_bytes()).decode(),
                "CertIssuerPublicKey": base64.b64encode(public).decode()}

    def issue(self, csr_pem: bytes, identity: NodeIdentity, addresses: list[str] | None = None,
              expiry: datetime.timedelta = DEFAULT_NODE_CERT_EXPIRY) -> bytes:
        """Sign a CSR, stamping the identity the CA chose. Returns the certificate PEM."""
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
            .sign(self.key, hashes.SHA256())
        )
        return cert_pem(cert)

    def verify(self, cert: x509.Certificate) -> None:
        """Raise CertificateError unless `cert` was signed by this CA and is within validity."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, Exception) as e:
            raise CertificateError(f"certificate not issued by this swarm's CA: {e}") from None
        now = datetime.datetime.now(datetime.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateError("certificate is expired or not yet valid")
