"""Certificate issuing on the cluster port: `ca.root`, `ca.join`, `ca.renew`.

`ca.root` and `ca.join` are open to peers without a certificate; everything else needs one.
During a root CA rotation (ca_rotation.py) certificates come from the new root with the
cross-signed intermediate after them, and the trust bundle handed out holds both roots; the
CA records on the node the TLSInfo of what it issued (`Description.TLSInfo`), which is how
the rotation sees a node move.
A join token decides the role (compared in constant time with the swarm's current tokens, so a
rotated token stops working at once); the CA, never the requester, decides the node ID and the
role written into the certificate. `ca.renew` re-issues for the caller's own node ID, with the
role the cluster state gives it.

A manager removed from Raft serves none of them (Unavailable): its store stopped at its removal,
so what it would say of roles and tokens may be out of date; the caller asks another manager.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Callable
from typing import Any

from ca.authority import CertificateError, NodeIdentity, RootCA, node_tls_info
from manager.store import ReadTx, Store, WriteTx
from manager.swarm.ca_rotation import ISSUED, intermediates, record_issued, signing_ca, trust_bundle
from model import Cluster, Node, new_id
from rpc.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from rpc.server import Access, Peer, RpcServer

INVALID_TOKEN = "A valid join token is necessary to join this cluster"
TLS_INFO_KEYS = frozenset({"TrustRoot", "CertIssuerSubject", "CertIssuerPublicKey"})


def cluster_of(tx: ReadTx) -> Cluster:
    clusters = tx.all("clusters")
    if not clusters:
        raise FailedPrecondition("the swarm is still initialising")
    return clusters[0]


def root_ca_of(cluster: Cluster) -> RootCA:
    """The CA that issues certificates now (the new root during a rotation)."""
    return signing_ca(cluster)


def cert_expiry(cluster: Cluster) -> datetime.timedelta:
    nanos = (cluster.spec.get("CAConfig") or {}).get("NodeCertExpiry") or 7_776_000_000_000_000
    return datetime.timedelta(microseconds=int(nanos) // 1000)


def role_for_certificate(node: Node) -> str:
    """A node keeps a manager certificate while it is, or is becoming, a manager."""
    return "manager" if node.role == "manager" or node.manager_status is not None else "worker"


def managers_of(tx: ReadTx) -> list[str]:
    return sorted(str((n.manager_status or {}).get("Addr")) for n in tx.all("nodes")
                  if n.manager_status and n.manager_status.get("Addr"))


class CAService:
    def __init__(self, store: Store, removed: Callable[[], str] = lambda: "") -> None:
        """`removed()` is why this manager serves nothing ("" while it is a Raft member)."""
        self._store = store
        self._removed = removed

    def _check_serving(self) -> None:
        why = self._removed()
        if why:
            raise Unavailable(why)

    def register(self, server: RpcServer) -> None:
        server.register("ca.root", self.root, Access.ANONYMOUS)
        server.register("ca.join", self.join, Access.ANONYMOUS)
        server.register("ca.renew", self.renew, Access.NODE)
        server.register("ca.confirm", self.confirm, Access.NODE)

    async def root(self, peer: Peer, params: dict[str, Any]) -> Any:
        self._check_serving()
        cluster = self._store.view(cluster_of)
        # The root the join tokens pin, and the cross-signed root a manager's certificate may
        # chain through during a rotation.
        return {"cert": cluster.root_ca["Cert"], "intermediates": intermediates(cluster)}

    async def join(self, peer: Peer, params: dict[str, Any]) -> Any:
        self._check_serving()
        token = str(params.get("token", ""))
        csr = params.get("csr")
        if not isinstance(csr, bytes):
            raise InvalidArgument("join request carries no certificate signing request")
        cluster = self._store.view(cluster_of)
        role = _role_of_token(cluster, token)
        if role is None:
            raise InvalidArgument(INVALID_TOKEN)
        node_id = new_id()
        host = peer.address.rsplit(":", 1)[0]
        description = params.get("description") if isinstance(params.get("description"), dict) else {}
        availability = str(params.get("availability") or "active")
        if availability not in ("active", "pause", "drain"):
            raise InvalidArgument(f"invalid availability {availability!r}")

        try:
            cert = root_ca_of(cluster).issue(csr, NodeIdentity(node_id, role, cluster.id),
                                             expiry=cert_expiry(cluster))
        except CertificateError as e:
            raise InvalidArgument(str(e)) from None
        root = trust_bundle(cluster)

        def create(tx: WriteTx) -> None:
            node = Node(id=node_id, spec={"Labels": {}, "Role": role, "Availability": availability},
                        description=description or {}, status={"State": "unknown", "Message": "", "Addr": host})
            record_issued(node, node_tls_info(cert, root.encode()))
            tx.create(node)

        await self._store.update(create)
        return {"node_id": node_id, "cert": cert, "root": root, "role": role,
                "cluster_id": cluster.id, "managers": self._store.view(managers_of)}

    async def renew(self, peer: Peer, params: dict[str, Any]) -> Any:
        self._check_serving()
        csr = params.get("csr")
        if not isinstance(csr, bytes):
            raise InvalidArgument("renewal carries no certificate signing request")
        cluster = self._store.view(cluster_of)
        node = self._store.view(lambda tx: tx.get("nodes", peer.node_id))
        if node is None:
            raise PermissionDenied(f"node {peer.node_id} is not a member of this swarm")
        role = role_for_certificate(node)
        try:
            cert = root_ca_of(cluster).issue(csr, NodeIdentity(node.id, role, cluster.id),
                                             expiry=cert_expiry(cluster))
        except CertificateError as e:
            raise InvalidArgument(str(e)) from None
        return {"cert": cert, "role": role, "root": trust_bundle(cluster)}

    async def confirm(self, peer: Peer, params: dict[str, Any]) -> Any:
        """A node says which TLSInfo it uses now (after a renewal a root rotation asked for,
        over a connection made with the new material): recorded on the node, as Docker records
        what a node reports, with its issuance state back to "issued"."""
        self._check_serving()
        info = params.get("tls_info")
        if not (isinstance(info, dict) and set(info) == TLS_INFO_KEYS
                and all(isinstance(v, str) for v in info.values())):
            raise InvalidArgument(f"tls_info must be an object of strings with keys {sorted(TLS_INFO_KEYS)}")

        def record(tx: WriteTx) -> None:
            node = tx.get("nodes", peer.node_id)
            if node is None:
                raise PermissionDenied(f"node {peer.node_id} is not a member of this swarm")
            if node.description.get("TLSInfo") == info and node.certificate.get("State") == ISSUED:
                return
            node = node.copy()
            record_issued(node, info)
            tx.update(node)

        await self._store.update(record)
        return {}


def _role_of_token(cluster: Cluster, token: str) -> str | None:
    tokens = cluster.join_tokens
    for role, key in (("manager", "Manager"), ("worker", "Worker")):
        current = str(tokens.get(key, ""))
        if current and hmac.compare_digest(current.encode(), token.strip().encode()):
            return role
    return None
