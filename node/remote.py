"""The joining side of the cluster port: how a node gets into a swarm and keeps its certificate.

`request_membership` trusts nothing on first contact: it fetches the manager's root CA, checks
it against the digest in the join token, checks that the manager's own certificate was issued by
that CA, and only then sends its token and a CSR. `renew_certificate` asks any known manager to
re-issue the node's certificate (same key) with the role the cluster gives it now.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from cryptography import x509

from ca import tokens
from ca.authority import RootCA, load_certs, load_key, make_csr, new_key
from ca.node_tls import NodeCredentials, bootstrap_client_context
from engineapi.http import ApiError
from rpc.client import RpcClient
from rpc.errors import RpcError

log = logging.getLogger("shoal.swarm")


def pem_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


async def request_membership(remote: str, token: tokens.JoinToken, description: dict[str, Any],
                             availability: str) -> tuple[dict[str, Any], Any]:
    """Join through the manager at `remote`: returns its reply (node ID, certificate, role, ...)
    and the private key the certificate is for."""
    async with RpcClient(remote, bootstrap_client_context(), connect_timeout=5) as client:
        answer = await client.call("ca.root", timeout=10)
        root = RootCA.from_pem(answer["cert"].encode())
        # During a root CA rotation the manager's certificate comes from the new root, which the
        # root the token pins has cross-signed.
        cross = [c for pem in answer.get("intermediates") or [] for c in load_certs(pem_bytes(pem))]
        if not token.matches_ca(root.der):
            raise ApiError(400, f"remote CA at {remote} does not match the fingerprint in the join token; "
                                "refusing to trust it")
        if client.peer_cert_der is None:
            raise ApiError(400, f"manager at {remote} presented no certificate")
        try:
            root.verify(x509.load_der_x509_certificate(client.peer_cert_der), cross)
        except Exception as e:
            raise ApiError(400, f"manager at {remote} presented a certificate its CA did not issue: {e}") from None
        key = new_key()
        try:
            reply = await client.call("ca.join", {"token": str(token), "csr": make_csr(key),
                                                  "description": description, "availability": availability},
                                      timeout=30)
        except RpcError as e:
            if e.code == "invalid_argument":
                raise ApiError(400, f"rpc error: code = InvalidArgument desc = {e.message}") from None
            raise
        return reply, key


async def renew_certificate(managers: list[str], ssl_context: ssl.SSLContext,
                            creds: NodeCredentials) -> NodeCredentials | None:
    """New credentials from the first manager that answers, or None if none did."""
    key = load_key(creds.key_pem)
    for addr in managers:
        try:
            async with RpcClient(addr, ssl_context, connect_timeout=3) as client:
                reply = await client.call("ca.renew", {"csr": make_csr(key)}, timeout=10)
        except RpcError as e:
            log.info("renewal via %s failed: %s", addr, e)
            continue
        return NodeCredentials(pem_bytes(reply["root"]), pem_bytes(reply["cert"]), creds.key_pem, creds.root_key_pem,
                               key_password=creds.key_password)
    return None
