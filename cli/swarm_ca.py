"""`shoal swarm ca [--rotate] [--ca-cert F --ca-key F] [--cert-expiry D] [-q] [--detach]`.

As `docker swarm ca`: without `--rotate` it prints the swarm's root CA certificate. With it, it
reads the swarm, asks for a new root (`Spec.CAConfig.ForceRotate` + 1) or the given one
(`SigningCACert`, `SigningCAKey`), posts the update and, unless `--detach`, shows the progress
until every node has a certificate from the new root and trusts only it, then prints the root.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import click

from cli.client import DaemonClient
from cli.common import console, fail, with_client
from cli.swarm_cmds import parse_duration_ns

POLL_INTERVAL = 0.5     # seconds between progress reads (the CLI polls, as docker's does)


def _read_pem(path: str, flag: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        fail(f"{flag}: cannot read {path}: {e.strerror or e}")
    raise AssertionError("unreachable")


def progress(cluster: dict[str, Any], nodes: list[dict[str, Any]]) -> tuple[int, int, int, bool]:
    """(nodes with a certificate from the wanted issuer, nodes trusting the wanted root, all
    nodes, done), counted as docker's CLI counts them."""
    wanted = cluster.get("TLSInfo") or {}
    certs = roots = 0
    for node in nodes:
        info = (node.get("Description") or {}).get("TLSInfo") or {}
        if (info.get("CertIssuerPublicKey") == wanted.get("CertIssuerPublicKey")
                and info.get("CertIssuerSubject") == wanted.get("CertIssuerSubject")):
            certs += 1
        if info.get("TrustRoot") == wanted.get("TrustRoot"):
            roots += 1
    total = len(nodes)
    if cluster.get("RootRotationInProgress") or certs < total:
        roots = 0      # the trust root moves only once the rotation is over
    return certs, roots, total, certs == total == roots


def _bar(done: int, total: int, width: int = 40) -> str:
    filled = width * done // total if total else width
    return "[" + "=" * max(0, filled - 1) + (">" if filled else "") + " " * (width - filled) + f"] {done}/{total} nodes"


async def _follow(c: DaemonClient, quiet: bool) -> None:
    shown: tuple[int, int, int] | None = None
    while True:
        cluster = await c.get("/swarm")
        nodes = await c.get("/nodes")
        certs, roots, total, done = progress(cluster, nodes)
        if not quiet and (certs, roots, total) != shown:
            shown = (certs, roots, total)
            trust = str((cluster.get("TLSInfo") or {}).get("TrustRoot") or "")
            console.print(f"desired root digest: sha256:{hashlib.sha256(trust.encode()).hexdigest()}\n"
                          f"  rotated TLS certificates: {_bar(certs, total)}\n"
                          f"  rotated CA certificates:  {_bar(roots, total)}", markup=False)
        if done:
            return
        await asyncio.sleep(POLL_INTERVAL)   # a poll of another process's progress, with no event to wait on


@click.command("ca")
@click.option("--rotate", is_flag=True, help="Rotate the swarm CA; without --ca-cert, a new root is generated.")
@click.option("--ca-cert", default="", help="Path to the PEM root CA certificate to rotate to.")
@click.option("--ca-key", default="", help="Path to the PEM root CA key to rotate to.")
@click.option("--cert-expiry", default="", help="Validity period for node certificates (e.g. 2160h).")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output.")
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of waiting for the rotation.")
@click.pass_context
def ca(ctx: click.Context, rotate: bool, ca_cert: str, ca_key: str, cert_expiry: str, quiet: bool,
       detach: bool) -> None:
    """Display and rotate the root CA."""
    if not rotate:
        for flag, value in (("ca-cert", ca_cert), ("ca-key", ca_key), ("cert-expiry", cert_expiry)):
            if value:
                fail(f"`--{flag}` flag requires the `--rotate` flag to update the CA")
    if ca_key and not ca_cert:
        fail("the --ca-key flag requires that a --ca-cert flag be provided as well")
    if ca_cert and not ca_key:
        fail("the --ca-cert flag requires that a --ca-key flag be provided as well "
             "(external CAs are not supported)")
    cert_pem = _read_pem(ca_cert, "--ca-cert") if ca_cert else ""
    key_pem = _read_pem(ca_key, "--ca-key") if ca_key else ""
    expiry = parse_duration_ns(cert_expiry, "--cert-expiry") if cert_expiry else None

    async def go(c: DaemonClient) -> str:
        cluster = await c.get("/swarm")
        if rotate:
            spec = cluster["Spec"]
            config = spec.setdefault("CAConfig", {})
            if expiry is not None:
                config["NodeCertExpiry"] = expiry
            config["SigningCACert"], config["SigningCAKey"] = cert_pem, key_pem
            if not cert_pem:
                config["ForceRotate"] = int(config.get("ForceRotate") or 0) + 1
            await c.post("/swarm/update", spec, version=cluster["Version"]["Index"])
            if detach:
                return ""
            await _follow(c, quiet)
            cluster = await c.get("/swarm")
        root = str((cluster.get("TLSInfo") or {}).get("TrustRoot") or "")
        if not root:
            fail("No CA information available")
        return root.strip() + "\n"

    console.print(with_client(ctx, go), markup=False, end="")
