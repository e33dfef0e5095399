"""Root CA rotation: `swarm update` with a new `Spec.CAConfig.ForceRotate` (a root the leader
makes) or `SigningCACert` + `SigningCAKey` (the user's root), as `docker swarm ca --rotate` sends.

Theory of operation. The cluster's `root_ca` holds the current root (`Cert`, `Key`) and, while a
rotation runs, `Rotation`: the new root, its key and `CrossSigned`, an intermediate with the new
root's subject and key signed by the current root. During the rotation:
- the CA signs every certificate with the new key and appends the cross-signed intermediate, so
  a node that still trusts only the old root (one that was down when the rotation started)
  accepts it, and hands out the trust bundle old + new, so the new root's certificates and the
  old root's are both accepted while nodes move;
- the cluster's TLSInfo keeps the old root as `TrustRoot` and names the new root as the issuer
  (`CertIssuerSubject`, `CertIssuerPublicKey`), which is what `docker swarm ca` compares each
  node's own TLSInfo with to draw its progress;
- `RootRotation` (a leader loop) marks every node whose certificate or trust bundle is not the
  wanted one: `Node.certificate = {"State": "rotate", "Issuer": <wanted issuer's key>, "Trust":
  <digest of the wanted bundle>}`; the node learns it through its dispatcher session (the node
  message), renews until its own credentials match the wish, and then tells the CA, over a
  connection made with them, the TLSInfo it uses (`ca.confirm`, ca_service.py), which sets the
  node's `Description.TLSInfo` and its state back to "issued" (a node also reports its TLSInfo
  in the description its session opens with). A node counts as moved only once it said so, so
  a renewal whose answer was lost cannot let the rotation end without it.
Once every node in the store, down ones included (as swarmkit's reconciler does: only removing
a node takes it out of the count), has a certificate from the new root, the loop finishes the
rotation: the new root becomes the only root, the join tokens get new secrets and the new
root's digest, and nodes are marked again until each trusts the new root only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any

from ca import tokens
from ca.authority import CertificateError, RootCA, bundle_digest, bundle_pem, issuer_info, key_pem, load_certs
from manager.specs import SpecError
from manager.store import Store, WriteTx
from model import Cluster, Node

log = logging.getLogger("shoal.ca")

ROTATE = "rotate"
ISSUED = "issued"


# ---- the cluster's CA material ----------------------------------------------------------------
def current_root(cluster: Cluster) -> RootCA:
    material = cluster.root_ca
    return RootCA.from_pem(material["Cert"].encode(), material["Key"].encode() or None)


def signing_ca(cluster: Cluster) -> RootCA:
    """The CA that issues certificates now: the rotation's new root (with the cross-signed
    intermediate as its chain) while a rotation runs, the current root otherwise."""
    rotation = cluster.root_ca.get("Rotation")
    if not rotation:
        return current_root(cluster)
    new = RootCA.from_pem(rotation["Cert"].encode(), rotation["Key"].encode())
    return RootCA(new.cert, new.key, load_certs(rotation["CrossSigned"].encode()))


def trust_bundle(cluster: Cluster) -> str:
    """The roots nodes should trust: old and new during a rotation, the one root otherwise."""
    rotation = cluster.root_ca.get("Rotation")
    current = str(cluster.root_ca["Cert"])
    return current + str(rotation["Cert"]) if rotation else current


def intermediates(cluster: Cluster) -> list[str]:
    rotation = cluster.root_ca.get("Rotation")
    return [str(rotation["CrossSigned"])] if rotation else []


def wanted_issuer(cluster: Cluster) -> dict[str, str]:
    """The issuer every node's certificate should name (the certificate alone: no key parsed)."""
    rotation = cluster.root_ca.get("Rotation")
    pem = str(rotation["Cert"] if rotation else cluster.root_ca["Cert"])
    return dict(_issuer_of(pem))


@functools.lru_cache(maxsize=8)
def _issuer_of(pem: str) -> dict[str, str]:
    return issuer_info(load_certs(pem.encode())[0])


def converged(node: Node, cluster: Cluster, issuer: dict[str, str] | None = None) -> tuple[bool, bool]:
    """(has a certificate of the wanted issuer, trusts exactly the wanted bundle)."""
    issuer = issuer if issuer is not None else wanted_issuer(cluster)
    info = node.description.get("TLSInfo") or {}
    cert_ok = all(info.get(k) == v for k, v in issuer.items())
    return cert_ok, info.get("TrustRoot") == trust_bundle(cluster)


# ---- starting a rotation (POST /swarm/update) ----------------------------------------------------
@dataclass(frozen=True)
class CARequest:
    force_rotate: int | None
    signing: RootCA | None      # the user's root, checked


def parse_ca_request(spec: dict[str, Any] | None) -> CARequest:
    """What a swarm update asks of the CA; SpecError naming the field for bad input."""
    ca = (spec or {}).get("CAConfig") or {}
    cert, key = str(ca.get("SigningCACert") or ""), str(ca.get("SigningCAKey") or "")
    force = ca.get("ForceRotate")
    if key and not cert:
        raise SpecError("Spec.CAConfig.SigningCAKey: a signing CA key needs its certificate in "
                        "Spec.CAConfig.SigningCACert")
    if cert and not key:
        raise SpecError("Spec.CAConfig.SigningCACert: a signing CA certificate without its key "
                        "(Spec.CAConfig.SigningCAKey) needs an external CA, which this swarm does not support")
    signing = None
    if cert:
        try:
            signing = RootCA.from_user(cert, key)
        except CertificateError as e:
            raise SpecError(f"Spec.CAConfig.SigningCACert: {e}") from None
    return CARequest(int(force) if isinstance(force, int) else None, signing)


def apply_ca_request(cluster: Cluster, request: CARequest) -> None:
    """Start (or abandon) a rotation on `cluster` (a copy being written) as `request` asks, and
    keep the signing material out of the stored spec (Docker redacts it)."""
    ca_spec = dict(cluster.spec.get("CAConfig") or {})
    ca_spec.pop("SigningCACert", None)
    ca_spec.pop("SigningCAKey", None)
    cluster.spec = {**cluster.spec, "CAConfig": ca_spec}
    material = dict(cluster.root_ca)
    last_forced = int(material.get("LastForcedRotation") or 0)
    forced = request.force_rotate is not None and request.force_rotate != last_forced
    if forced:
        material["LastForcedRotation"] = request.force_rotate
    rotation = material.get("Rotation")
    target: RootCA | None = None
    if request.signing is not None:
        given = request.signing.cert_pem.decode()
        if given == material["Cert"]:
            if rotation:            # back to the current root: the rotation is abandoned
                material.pop("Rotation")
                log.info("root rotation abandoned: the current root was given again")
            cluster.root_ca = material
            _refresh(cluster)
            return
        if not (rotation and given == rotation["Cert"]) or forced:
            target = request.signing
    elif forced:
        target = RootCA.create(cluster.id)
    if target is not None:
        old = current_root(cluster)
        assert target.key is not None
        material["Rotation"] = {"Cert": target.cert_pem.decode(), "Key": key_pem(target.key).decode(),
                                "CrossSigned": bundle_pem([old.cross_sign(target.cert)]).decode()}
        log.info("root rotation started", extra={"user_root": request.signing is not None})
    cluster.root_ca = material
    _refresh(cluster)


def _refresh(cluster: Cluster) -> None:
    cluster.root_rotation_in_progress = bool(cluster.root_ca.get("Rotation"))
    cluster.tls_info = {"TrustRoot": str(cluster.root_ca["Cert"]), **wanted_issuer(cluster)}


def finish(cluster: Cluster) -> None:
    """The new root becomes the cluster's only root; join tokens carry its digest."""
    rotation = cluster.root_ca["Rotation"]
    cluster.root_ca = {"Cert": rotation["Cert"], "Key": rotation["Key"],
                       "LastForcedRotation": cluster.root_ca.get("LastForcedRotation", 0)}
    der = current_root(cluster).der
    cluster.join_tokens = {"Worker": tokens.make_token(der), "Manager": tokens.make_token(der)}
    _refresh(cluster)


# ---- the leader loop ---------------------------------------------------------------------------
class RootRotation:
    """Marks the nodes that must renew, and finishes a rotation once every node has moved.
    Level-triggered: each pass re-reads the cluster and the nodes."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def run(self) -> None:
        async with contextlib.aclosing(self._store.changes(("clusters", "nodes"))) as changes:
            async for _ in changes:
                try:
                    await self._store.update(self.reconcile)
                except Exception:      # a conflicting write, say: the next change retries
                    log.exception("root rotation pass failed")

    def reconcile(self, tx: WriteTx) -> None:
        clusters = tx.all("clusters")
        if not clusters or not clusters[0].root_ca.get("Cert"):
            return
        cluster: Cluster = clusters[0]
        nodes: list[Node] = tx.all("nodes")
        if cluster.root_ca.get("Rotation"):
            issuer = wanted_issuer(cluster)
            if all(converged(n, cluster, issuer)[0] for n in nodes):
                cluster = cluster.copy()
                finish(cluster)
                tx.update(cluster)
                log.info("root rotation completed: every node has a certificate from the new root")
        issuer = wanted_issuer(cluster)
        wish = {"State": ROTATE, "Issuer": issuer["CertIssuerPublicKey"], "Trust": bundle_digest(trust_bundle(cluster))}
        rotating = bool(cluster.root_ca.get("Rotation"))
        for node in nodes:
            if all(converged(node, cluster, issuer)) or node.certificate == wish:
                continue
            if not rotating and "TLSInfo" not in node.description:
                continue     # a node that has not reported yet (just initialised): nothing to move

            marked = node.copy()
            marked.certificate = wish
            tx.update(marked)


def record_issued(node: Node, tls_info: dict[str, str]) -> None:
    """On a node being written: the TLSInfo it uses (it confirmed it, or the CA just issued it
    a certificate on joining)."""
    node.description = {**node.description, "TLSInfo": tls_info}
    node.certificate = {"State": ISSUED}
