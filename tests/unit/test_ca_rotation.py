"""Root CA rotation's certificates, checked by real OpenSSL handshakes (memory BIOs, no sockets):
a certificate the new root issues during the rotation (carrying the cross-signed intermediate)
is accepted by a node that trusts only the old root, by one that trusts only the new one and by
one that trusts both; once the rotation is over, a context that trusts only the new root
refuses a certificate of the old one. Also the node's TLSInfo and the live listener context."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from ca.authority import (
    CertificateError,
    RootCA,
    bundle_pem,
    identity_of,
    issuer_info,
    key_pem,
    load_certs,
    make_csr,
    new_key,
    node_tls_info,
)
from ca.live_tls import LiveServerContext
from model.identity import NodeIdentity


class Peer:
    """A node's TLS material on disk: a certificate chain, its key and the roots it trusts."""

    def __init__(self, tmp: Path, name: str, issuer: RootCA, trust: list[RootCA]) -> None:
        key = new_key()
        self.chain = issuer.issue(make_csr(key), NodeIdentity(name, "manager", "cluster"))
        self.cert_file, self.key_file = tmp / f"{name}.crt", tmp / f"{name}.key"
        self.cert_file.write_bytes(self.chain)
        self.key_file.write_bytes(key_pem(key))
        self.trust = bundle_pem([r.cert for r in trust]).decode()

    def server(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.load_verify_locations(cadata=self.trust)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.load_verify_locations(cadata=self.trust)
        return ctx


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """Run a mutual TLS handshake in memory; the common name the server saw in the client's
    certificate. An SSLError when either side refuses the other."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out)
    done = {id(srv): False, id(cli): False}
    for _ in range(20):
        for side, out, other_in in ((cli, c_out, s_in), (srv, s_out, c_in)):
            if not done[id(side)]:
                try:
                    side.do_handshake()
                    done[id(side)] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                other_in.write(data)
        if all(done.values()):
            der = srv.getpeercert(binary_form=True)
            assert der is not None
            return identity_of(x509.load_der_x509_certificate(der)).node_id
    raise AssertionError("handshake did not finish")


@pytest.fixture
def roots() -> tuple[RootCA, RootCA, RootCA]:
    """(old root, new root, the new root as it signs during the rotation: with the cross-signed
    intermediate as its chain)."""
    old = RootCA.create("cluster")
    new = RootCA.create("cluster")
    return old, new, RootCA(new.cert, new.key, [old.cross_sign(new.cert)])


def test_a_leaf_of_the_new_root_is_accepted_by_nodes_trusting_only_the_old_root(tmp_path: Path, roots) -> None:
    old, new, rotating = roots
    moved = Peer(tmp_path, "moved", rotating, [old, new])
    behind = Peer(tmp_path, "behind", old, [old])          # down during the rotation start: old cert, old trust
    assert len(load_certs(moved.chain)) == 2               # the leaf, then the cross-signed root
    assert handshake(behind.server(), moved.client()) == "moved"
    assert handshake(moved.server(), behind.client()) == "behind"
    # The joiner's check (no TLS stack): through the intermediate, not directly.
    leaf, cross = load_certs(moved.chain)
    old.verify(leaf, [cross])
    with pytest.raises(CertificateError):
        old.verify(leaf)


def test_after_the_rotation_only_the_new_root_is_trusted(tmp_path: Path, roots) -> None:
    old, new, rotating = roots
    during = Peer(tmp_path, "during", rotating, [new])   # a leaf still carrying the intermediate
    final = Peer(tmp_path, "final", new, [new])          # issued after the rotation: no intermediate
    stale = Peer(tmp_path, "stale", old, [old, new])     # a certificate of the old root
    assert len(load_certs(final.chain)) == 1
    assert handshake(final.server(), during.client()) == "during"
    assert handshake(during.server(), final.client()) == "final"
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        handshake(final.server(), stale.client())
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        handshake(stale.server(), final.client())
    with pytest.raises(CertificateError):
        new.verify(load_certs(stale.chain)[0])


def test_node_tls_info_names_the_issuer_of_the_node_certificate(tmp_path: Path, roots) -> None:
    old, new, rotating = roots
    trust = bundle_pem([old.cert, new.cert])
    during = node_tls_info(Peer(tmp_path, "a", rotating, [old]).chain, trust)
    assert during["TrustRoot"] == trust.decode()
    assert {k: during[k] for k in ("CertIssuerSubject", "CertIssuerPublicKey")} == issuer_info(new.cert)
    before = node_tls_info(Peer(tmp_path, "b", old, [old]).chain, old.cert_pem)
    assert {k: before[k] for k in ("CertIssuerSubject", "CertIssuerPublicKey")} == issuer_info(old.cert)
    assert before["TrustRoot"] == old.tls_info()["TrustRoot"]


def test_a_live_listener_context_moves_new_handshakes_to_the_newest_material(tmp_path: Path, roots) -> None:
    old, new, _ = roots
    first = Peer(tmp_path, "first", old, [old])
    second = Peer(tmp_path, "second", new, [new])
    live = LiveServerContext(first.server())
    client_old = Peer(tmp_path, "client-old", old, [old, new])
    assert handshake(live.listener, client_old.client()) == "client-old"
    live.update(second.server())                 # the node's certificate and trust moved to the new root
    client_new = Peer(tmp_path, "client-new", new, [new])
    assert handshake(live.listener, client_new.client()) == "client-new"
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        handshake(live.listener, client_old.client())


def test_a_user_root_must_be_a_valid_ca_with_its_key(roots) -> None:
    old, new, _ = roots
    assert new.key is not None and old.key is not None
    given = RootCA.from_user(new.cert_pem.decode(), key_pem(new.key).decode())
    assert given.cert == new.cert
    with pytest.raises(CertificateError, match="does not match"):
        RootCA.from_user(new.cert_pem.decode(), key_pem(old.key).decode())
    leaf = old.issue(make_csr(new_key()), NodeIdentity("n", "worker", "cluster")).decode()
    with pytest.raises(CertificateError, match="not a CA"):
        RootCA.from_user(leaf, key_pem(old.key).decode())
    with pytest.raises(CertificateError, match="invalid certificate"):
        RootCA.from_user("not a pem", key_pem(old.key).decode())
