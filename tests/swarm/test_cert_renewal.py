"""Node certificates are renewed before they expire, and the swarm keeps working past the
original certificates' expiry (new connections included)."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography import x509

from cli.lab import Lab
from tests.swarm.helpers import api, eventually, nodes_by_host

EXPIRY_S = 12


def serial(lab: Lab, node: str) -> int:
    pem = (Path(lab.node(node).data_dir) / "swarm" / "certificates" / "swarm-node.crt").read_bytes()
    return x509.load_pem_x509_certificate(pem).serial_number


def test_certificates_renew_before_expiry(make_lab) -> None:
    lab: Lab = make_lab(managers=1, workers=1, swarm=False)
    api(lab, "manager-1", "POST", "/swarm/init", {
        "AdvertiseAddr": lab.node("manager-1").address,
        "Spec": {"CAConfig": {"NodeCertExpiry": EXPIRY_S * 1_000_000_000}}})
    token = api(lab, "manager-1", "GET", "/swarm")["JoinTokens"]["Worker"]
    api(lab, "worker-1", "POST", "/swarm/join", {"RemoteAddrs": [f"{lab.node('manager-1').address}:2377"],
                                                 "JoinToken": token, "AdvertiseAddr": lab.node("worker-1").address})
    started = time.monotonic()
    first = {n: serial(lab, n) for n in ("manager-1", "worker-1")}
    eventually(lambda: all(serial(lab, n) != first[n] for n in first), timeout=EXPIRY_S,
               what="both nodes to renew their certificates before expiry")
    # Past the first certificates' expiry: restarting the worker opens new TLS connections, which
    # only renewed certificates can make.
    remaining = EXPIRY_S + 1 - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)  # a real wait: the original certificates must have expired
    lab.restart("worker-1")
    eventually(lambda: nodes_by_host(lab, "manager-1")["worker-1"]["Status"]["State"] == "ready",
               what="the restarted worker to connect with its renewed certificate")
