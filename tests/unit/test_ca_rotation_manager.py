"""The manager's side of a root CA rotation on an in-memory store: what a swarm update starts,
what the CA issues meanwhile, which nodes are asked to renew, and when the rotation ends (every
node in the store, down ones included, must have moved)."""

from __future__ import annotations

import asyncio

import pytest

from ca.authority import RootCA, key_pem, load_certs, make_csr, new_key, node_tls_info
from cli.swarm_ca import progress
from manager.specs import SpecError
from manager.store import Store
from manager.swarm.ca_rotation import (
    ROTATE,
    RootRotation,
    apply_ca_request,
    parse_ca_request,
    record_issued,
    signing_ca,
    trust_bundle,
)
from model import Cluster, Node
from model.identity import NodeIdentity


def new_cluster() -> tuple[Cluster, RootCA]:
    root = RootCA.create("c1")
    assert root.key is not None
    cluster = Cluster(id="c1", spec={"Name": "default", "CAConfig": {"NodeCertExpiry": 10**15}},
                      root_ca={"Cert": root.cert_pem.decode(), "Key": key_pem(root.key).decode()},
                      tls_info=root.tls_info())
    return cluster, root


def issue_to(node: Node, cluster: Cluster) -> None:
    """What the CA does on a renewal: issue from the signing CA, record the TLSInfo."""
    cert = signing_ca(cluster).issue(make_csr(new_key()), NodeIdentity(node.id, "worker", cluster.id))
    record_issued(node, node_tls_info(cert, trust_bundle(cluster).encode()))


def test_force_rotate_starts_a_cross_signed_rotation_and_redacts_the_key() -> None:
    cluster, old = new_cluster()
    apply_ca_request(cluster, parse_ca_request({"CAConfig": {"ForceRotate": 0}}))
    assert not cluster.root_rotation_in_progress          # the same ForceRotate: nothing to do
    apply_ca_request(cluster, parse_ca_request({"CAConfig": {"ForceRotate": 1, "SigningCACert": "",
                                                             "SigningCAKey": ""}}))
    assert cluster.root_rotation_in_progress
    assert cluster.tls_info["TrustRoot"] == old.cert_pem.decode()     # the trust root moves at the end
    signer = signing_ca(cluster)
    assert signer.cert != old.cert and len(signer.chain) == 1
    old.verify(signer.chain[0])                                      # cross-signed by the old root
    assert trust_bundle(cluster) == old.cert_pem.decode() + signer.cert_pem.decode()
    assert "SigningCAKey" not in cluster.spec["CAConfig"]
    leaf, cross = load_certs(signer.issue(make_csr(new_key()), NodeIdentity("n", "worker", "c1")))
    old.verify(leaf, [cross])


def test_a_users_root_and_going_back_to_the_current_one() -> None:
    cluster, old = new_cluster()
    mine = RootCA.create("mine")
    assert mine.key is not None and old.key is not None
    request = {"CAConfig": {"SigningCACert": mine.cert_pem.decode(), "SigningCAKey": key_pem(mine.key).decode()}}
    apply_ca_request(cluster, parse_ca_request(request))
    assert signing_ca(cluster).cert == mine.cert
    apply_ca_request(cluster, parse_ca_request(request))              # the same again: still that rotation
    assert signing_ca(cluster).cert == mine.cert and cluster.root_rotation_in_progress
    back = {"CAConfig": {"SigningCACert": old.cert_pem.decode(), "SigningCAKey": key_pem(old.key).decode()}}
    apply_ca_request(cluster, parse_ca_request(back))                 # the current root: rotation abandoned
    assert not cluster.root_rotation_in_progress and signing_ca(cluster).cert == old.cert


@pytest.mark.parametrize("config, field", [
    ({"SigningCACert": "x"}, "Spec.CAConfig.SigningCACert"),
    ({"SigningCAKey": "x"}, "Spec.CAConfig.SigningCAKey"),
    ({"SigningCACert": "not a pem", "SigningCAKey": "not a key"}, "Spec.CAConfig.SigningCACert"),
])
def test_bad_signing_material_names_the_field(config: dict[str, str], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        parse_ca_request({"CAConfig": config})


def test_the_rotation_waits_for_every_node_down_ones_included() -> None:
    async def scenario() -> None:
        store = Store()
        cluster, old = new_cluster()
        nodes = [Node(id=f"n{i}", spec={"Role": "worker"}) for i in range(3)]
        for node in nodes:
            issue_to(node, cluster)
        nodes[2].status = {"State": "down", "Message": "", "Addr": ""}

        def put(tx) -> None:
            tx.create(cluster)
            for node in nodes:
                tx.create(node)

        await store.update(put)
        loop = RootRotation(store)

        def rotate(tx) -> None:
            current = tx.all("clusters")[0].copy()
            apply_ca_request(current, parse_ca_request({"CAConfig": {"ForceRotate": 1}}))
            tx.update(current)

        await store.update(rotate)
        await store.update(loop.reconcile)
        marked = store.view(lambda tx: [n.certificate.get("State") for n in tx.all("nodes")])
        assert marked == [ROTATE] * 3

        async def renew(node_id: str) -> None:
            def fn(tx) -> None:
                node = tx.get("nodes", node_id).copy()
                issue_to(node, tx.all("clusters")[0])
                tx.update(node)
            await store.update(fn)
            await store.update(loop.reconcile)

        await renew("n0")
        await renew("n1")
        assert store.view(lambda tx: tx.all("clusters")[0].root_rotation_in_progress)   # n2 is down
        await renew("n2")                                                               # it came back
        final = store.view(lambda tx: tx.all("clusters")[0])
        assert not final.root_rotation_in_progress
        assert final.tls_info["TrustRoot"] != old.cert_pem.decode() == cluster.tls_info["TrustRoot"]
        assert trust_bundle(final) == final.tls_info["TrustRoot"]                       # the new root only
        # Every node is asked again, now to trust the new root only.
        wishes = store.view(lambda tx: [n.certificate for n in tx.all("nodes")])
        assert all(w["State"] == ROTATE for w in wishes)

    asyncio.run(scenario())


def test_the_cli_counts_progress_as_docker_does() -> None:
    wanted = {"TrustRoot": "old", "CertIssuerSubject": "s2", "CertIssuerPublicKey": "k2"}
    moved = {"Description": {"TLSInfo": {**wanted, "TrustRoot": "old+new"}}}
    behind = {"Description": {"TLSInfo": {"TrustRoot": "old", "CertIssuerSubject": "s1", "CertIssuerPublicKey": "k"}}}
    cluster = {"TLSInfo": wanted, "RootRotationInProgress": True}
    assert progress(cluster, [moved, behind, {}]) == (1, 0, 3, False)
    final = {"TrustRoot": "new", "CertIssuerSubject": "s2", "CertIssuerPublicKey": "k2"}
    done = {"Description": {"TLSInfo": final}}
    assert progress({"TLSInfo": final, "RootRotationInProgress": False}, [done, moved]) == (2, 1, 2, False)
    assert progress({"TLSInfo": final, "RootRotationInProgress": False}, [done, done]) == (2, 2, 2, True)
