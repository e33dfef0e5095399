"""Root CA, node certificates and join tokens."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509

from ca import tokens
from ca.authority import CertificateError, NodeIdentity, RootCA, key_pem, make_csr, new_key
from ca.node_tls import NodeCredentials


def test_token_round_trip_and_ca_pinning() -> None:
    ca, other = RootCA.create("cluster-a"), RootCA.create("cluster-b")
    text = tokens.make_token(ca.der)
    assert text.startswith("SWMTKN-1-")
    parsed = tokens.parse_token(text)
    assert len(parsed.digest) == 50 and len(parsed.secret) == 25
    assert parsed.matches_ca(ca.der)
    assert not parsed.matches_ca(other.der)
    assert str(parsed) == text


@pytest.mark.parametrize("bad,why", [
    ("nonsense", "expected SWMTKN-1"),
    ("SWMTKN-2-" + "a" * 50 + "-" + "b" * 25, "unsupported version"),
    ("SWMTKN-1-" + "a" * 49 + "-" + "b" * 25, "malformed CA digest"),
    ("SWMTKN-1-" + "a" * 50 + "-" + "B" * 25, "malformed secret"),
])
def test_bad_tokens_are_named(bad: str, why: str) -> None:
    with pytest.raises(tokens.TokenError, match=why):
        tokens.parse_token(bad)


def test_issued_certificate_carries_identity_chosen_by_the_ca(tmp_path: Path) -> None:
    ca = RootCA.create("cluster-x")
    key = new_key()
    pem = ca.issue(make_csr(key), NodeIdentity("node1", "worker", "cluster-x"))
    creds = NodeCredentials(ca.cert_pem, pem, key_pem(key))
    assert creds.identity == NodeIdentity("node1", "worker", "cluster-x")
    ca.verify(creds.cert)
    with pytest.raises(CertificateError, match="not issued by this swarm's CA"):
        RootCA.create("other").verify(creds.cert)
    assert not creds.renewal_due()
    assert creds.renewal_due(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=46))
    creds.save(tmp_path)
    loaded = NodeCredentials.load(tmp_path)
    assert loaded is not None and loaded.identity.node_id == "node1"
    assert (tmp_path / "swarm-node.key").stat().st_mode & 0o777 == 0o600


def test_garbage_csr_is_rejected_with_a_message() -> None:
    ca = RootCA.create("c")
    with pytest.raises(CertificateError, match="invalid certificate signing request"):
        ca.issue(b"not a csr", NodeIdentity("n", "worker", "c"))


def test_worker_and_manager_certs_differ_in_role() -> None:
    ca = RootCA.create("c")
    for role in ("worker", "manager"):
        pem = ca.issue(make_csr(new_key()), NodeIdentity("n", role, "c"))
        ou = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(
            x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
        assert ou == f"swarm-{role}"
