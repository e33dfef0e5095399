"""Root CA rotation on the lab (issue 15 item 5): 2 managers and 2 workers, one worker's daemon
stopped. `swarm update` with a new ForceRotate starts the rotation; every live node gets a
certificate from the new root while the swarm keeps serving (a service scale during the rotation
succeeds and converges, which needs Raft between the managers and the dispatcher sessions); the
rotation stays in progress while the worker is down (Docker waits for every node that is not
removed); the worker comes back with its old certificate and old trust, renews, and the rotation
completes: every node trusts the new root only, on disk. Then a node that trusts only the new
root (the worker, rejoined with the new join token) takes part, the real docker CLI's
`docker swarm ca --rotate` rotates again to completion and prints the new root, and `shoal swarm
ca --rotate --ca-cert --ca-key` moves the swarm to a root of the user's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from ca.authority import RootCA, key_pem
from cli.lab import Lab
from tests.swarm.helpers import api, api_error, converged, eventually, load_busybox_everywhere, nodes_by_host

SHOAL = [sys.executable, "-m", "cli.main"]
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
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


def tls_verifies(lab: Lab, manager: str, roots: Path) -> bool:
    """Whether the manager's cluster port shows a chain that verifies against `roots` (from worker-1)."""
    argv = ["openssl", "s_client", "-connect", f"{lab.node(manager).address}:2377", "-CAfile", str(roots),
            "-verify_return_error", "-brief"]
    proc = subprocess.run(lab.exec_argv("worker-1", argv), input="", capture_output=True, text=True, timeout=20)
    return proc.returncode == 0


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
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Command": SLEEPER,
                                           "StopGracePeriod": 1_000_000_000}}})
    converged(lab, "demo", 2)
    before = swarm(lab)
    old_root = before["TLSInfo"]["TrustRoot"]
    old_subject = x509.load_pem_x509_certificate(old_root.encode()).subject
    lab.stop("worker-2")
    assert disk(lab, "manager-1", "swarm-root-ca.key")     # the first manager's copy of the CA key

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
    assert done is not None
    new_root = done["TLSInfo"]["TrustRoot"]
    assert new_root != old_root
    assert done["JoinTokens"]["Worker"] != before["JoinTokens"]["Worker"]   # the digest of the new root
    eventually(lambda: all(disk(lab, h, "swarm-root-ca.crt").decode() == new_root for h in ALL), timeout=60,
               what="every node to trust the new root only")
    eventually(lambda: all(n["Description"]["TLSInfo"]["TrustRoot"] == new_root
                           for n in nodes_by_host(lab, "manager-1").values()), what="every node's TLSInfo")
    # The managers' copy of the CA key: the old root's key is gone with the old root.
    eventually(lambda: not (Path(lab.node("manager-1").data_dir) / "swarm" / "certificates" / "swarm-root-ca.key")
               .exists(), what="the old CA key removed from manager-1's disk")

    # The managers' listeners serve the new material without a restart: a client that trusts only
    # the new root verifies their chains, one that trusts only the old root does not.
    (tmp_path / "new.pem").write_text(new_root)
    (tmp_path / "old.pem").write_text(old_root)
    for host in ("manager-1", "manager-2"):
        assert tls_verifies(lab, host, tmp_path / "new.pem") and not tls_verifies(lab, host, tmp_path / "old.pem"), host

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
    proc = lab.exec("manager-1", ["docker", "swarm", "ca", "--rotate"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    final = swarm(lab)
    assert final["RootRotationInProgress"] is False
    assert final["TLSInfo"]["TrustRoot"] not in (old_root, new_root)
    assert final["TLSInfo"]["TrustRoot"].strip() in proc.stdout
    assert "rotated TLS certificates" in proc.stdout
    shown = lab.exec("manager-2", [*SHOAL, "swarm", "ca"], check=True).stdout
    assert shown.strip() == final["TLSInfo"]["TrustRoot"].strip()

    # shoal's CLI with a root of the user's own: the swarm ends up trusting exactly it.
    mine = RootCA.create("users-own")
    assert mine.key is not None
    (tmp_path / "ca.crt").write_bytes(mine.cert_pem)
    (tmp_path / "ca.key").write_bytes(key_pem(mine.key))
    proc = lab.exec("manager-1", [*SHOAL, "swarm", "ca", "--rotate", "--ca-cert", str(tmp_path / "ca.crt"),
                                  "--ca-key", str(tmp_path / "ca.key")], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert swarm(lab)["TLSInfo"]["TrustRoot"] == mine.cert_pem.decode()
    assert proc.stdout.strip().endswith(mine.cert_pem.decode().strip())
    eventually(lambda: all(disk(lab, h, "swarm-root-ca.crt") == mine.cert_pem for h in ALL),
               what="every node to trust the user's root only")

    # Bad input: clear errors, nothing changes.
    spec = swarm(lab)["Spec"]
    spec["CAConfig"]["SigningCACert"] = mine.cert_pem.decode()
    err = api_error(lab, "manager-1", "POST", "/swarm/update", spec, version=swarm(lab)["Version"]["Index"])
    assert err.status == 400 and "Spec.CAConfig.SigningCACert" in str(err), err
    bad = lab.exec("manager-1", [*SHOAL, "swarm", "ca", "--rotate", "--ca-cert", str(tmp_path / "ca.crt")])
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--ca-key" in bad.stderr
    # Nodes kept talking throughout: no node ever refused a peer's certificate.
    for host in ALL:
        log = Path(lab.node(host).log).read_text(errors="replace")
        assert "certificate verify failed" not in log and "CERTIFICATE_VERIFY_FAILED" not in log, host
