"""Root CA rotation on the lab (issue 15 item 5): 2 managers and 2 workers, one worker's daemon
stopped. `swarm update` with a new ForceRotate starts the rotation; every live node gets a
certificate from the new root while the swarm keeps serving (a service scale during the rotation
succeeds and converges, which needs Raft between the managers and the dispatcher sessions); the
rotation stays in progress while the worker is down (Docker waits for every node that is not
removed); the worker comes back with its old certificate and old trust, renews, and the rotation
completes: every node trusts the new root only, on disk. Then a node that trusts only the new
root (the worker, rejoined with the new join token) takes part, and the real docker CLI's
`docker swarm ca --rotate` rotates again to completion and prints the new root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509

from cli.lab import Lab
from tests.swarm.helpers import api, converged, eventually, load_busybox_everywhere, nodes_by_host

LIVE = ("manager-1", "manager-2", "worker-1")
ALL = (*LIVE, "worker-2")


def disk(lab: Lab, host: str, name: str) -> bytes:
    return (Path(lab.node(host).data_dir) / "swarm" / "certificates" / name).read_bytes()


def node_issuer(lab: Lab, host: str) -> x509.Name:
    return x509.load_pem_x509_certificate(disk(lab, host, "swarm-node.crt")).issuer


def swarm(lab: Lab) -> dict[str, Any]:
    return api(lab, "manager-1", "GET", "/swarm")


def moved(lab: Lab, hosts: tuple[str, ...]) -> bool:
    """Every one of `hosts` reports a certificate from the issuer the cluster wants."""
    wanted = swarm(lab)["TLSInfo"]
    nodes = nodes_by_host(lab, "manager-1")
    return all(nodes[h]["Description"].get("TLSInfo", {}).get("CertIssuerPublicKey") == wanted["CertIssuerPublicKey"]
               for h in hosts)


def scale(lab: Lab, service: str, replicas: int) -> None:
    current = api(lab, "manager-2", "GET", f"/services/{service}")
    spec = current["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = replicas
    api(lab, "manager-2", "POST", f"/services/{current['ID']}/update", spec, version=current["Version"]["Index"])


def test_root_rotation_with_a_worker_down(make_lab, tmp_path: Path) -> None:
    lab: Lab = make_lab(managers=2, workers=2, swarm=True)
    load_busybox_everywhere(lab, tmp_path)
    api(lab, "manager-1", "POST", "/services/create", {
        "Name": "demo", "Mode": {"Replicated": {"Replicas": 2}},
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Command": ["sleep", "3600"]}}})
    converged(lab, "demo", 2)
    before = swarm(lab)
    old_root = before["TLSInfo"]["TrustRoot"]
    old_subject = x509.load_pem_x509_certificate(old_root.encode()).subject
    lab.stop("worker-2")

    spec = before["Spec"]
    spec["CAConfig"]["ForceRotate"] = int(spec["CAConfig"].get("ForceRotate") or 0) + 1
    api(lab, "manager-1", "POST", "/swarm/update", spec, version=before["Version"]["Index"])
    rotating = swarm(lab)
    assert rotating["RootRotationInProgress"] is True
    assert rotating["TLSInfo"]["TrustRoot"] == old_root      # the trust root moves only at the end
    assert rotating["Spec"]["CAConfig"].get("SigningCAKey", "") == ""

    scale(lab, "demo", 3)                                     # RPCs keep working during the rotation
    eventually(lambda: moved(lab, LIVE), timeout=60, what="every live node to get a new-root certificate")
    # The CA records what it issued before the node has saved it: the files follow shortly.
    eventually(lambda: all(node_issuer(lab, h) != old_subject and disk(lab, h, "swarm-root-ca.crt").decode()
                           .startswith(old_root) and disk(lab, h, "swarm-root-ca.crt").decode() != old_root
                           for h in LIVE), what="the live nodes' new certificates and old + new bundles on disk")
    converged(lab, "demo", 3)
    assert swarm(lab)["RootRotationInProgress"] is True      # worker-2 is down and has not moved
    assert node_issuer(lab, "worker-2") == old_subject

    lab.start("worker-2")                                     # old certificate, old trust: still accepted
    done = eventually(lambda: (lambda s: s if not s["RootRotationInProgress"] else None)(swarm(lab)),
                      timeout=60, what="the rotation to complete once worker-2 is back")
    new_root = done["TLSInfo"]["TrustRoot"]
    assert new_root != old_root
    assert done["JoinTokens"]["Worker"] != before["JoinTokens"]["Worker"]   # the digest of the new root
    eventually(lambda: all(disk(lab, h, "swarm-root-ca.crt").decode() == new_root for h in ALL), timeout=60,
               what="every node to trust the new root only")
    eventually(lambda: all(n["Description"]["TLSInfo"]["TrustRoot"] == new_root
                           for n in nodes_by_host(lab, "manager-1").values()), what="every node's TLSInfo")

    # A node that trusts only the new root: worker-2 leaves and joins again with the new token
    # (its old node object is removed: like Docker, a rotation waits for every node in the list).
    old_id = nodes_by_host(lab, "manager-1")["worker-2"]["ID"]
    api(lab, "worker-2", "POST", "/swarm/leave", force=True)
    api(lab, "manager-1", "DELETE", f"/nodes/{old_id}", force=True)
    api(lab, "worker-2", "POST", "/swarm/join", {"RemoteAddrs": [f"{lab.node('manager-2').address}:2377"],
                                                 "JoinToken": done["JoinTokens"]["Worker"],
                                                 "AdvertiseAddr": lab.node("worker-2").address})
    assert disk(lab, "worker-2", "swarm-root-ca.crt").decode() == new_root
    scale(lab, "demo", 5)
    converged(lab, "demo", 5)

    # The real docker CLI: rotate again, wait for convergence, print the new root.
    import subprocess
    try:
        proc = lab.exec("manager-1", ["docker", "swarm", "ca", "--rotate"], timeout=40)
    except subprocess.TimeoutExpired as e:
        s = swarm(lab)
        print("DEBUG swarm", s["RootRotationInProgress"], s["TLSInfo"]["CertIssuerPublicKey"][-20:], s["TLSInfo"]["TrustRoot"][-60:])
        for h, n in nodes_by_host(lab, "manager-1").items():
            t = n["Description"].get("TLSInfo", {})
            print("DEBUG node", h, n["Status"]["State"], t.get("CertIssuerPublicKey", "")[-20:], t.get("TrustRoot", "")[-60:], )
        print("DEBUG out", e.stdout[-600:] if e.stdout else None)
        raise
    assert proc.returncode == 0, proc.stderr
    final = swarm(lab)
    assert final["RootRotationInProgress"] is False
    assert final["TLSInfo"]["TrustRoot"] not in (old_root, new_root)
    assert final["TLSInfo"]["TrustRoot"].strip() in proc.stdout
    assert "rotated TLS certificates" in proc.stdout
    bad = lab.exec("manager-1", ["docker", "swarm", "ca", "--rotate", "--ca-cert", "/dev/null"], timeout=30)
    assert bad.returncode != 0
