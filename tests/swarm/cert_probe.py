"""Run inside a lab host's namespace: try the cluster port with a foreign certificate and with a
worker's certificate. Prints one JSON line with what happened.

    python -m tests.swarm.cert_probe MANAGER_ADDR WORKER_CERT_DIR SCRATCH_DIR
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from ca.authority import NodeIdentity, RootCA, key_pem, make_csr, new_key
from ca.encryption import KeyFile
from ca.node_tls import NodeCredentials
from rpc.client import RpcClient
from rpc.errors import RpcError


async def attempt(addr: str, creds: NodeCredentials, directory: Path, trust_any: bool) -> str:
    creds.save(directory)
    ctx = creds.client_context(directory)
    if trust_any:  # the attacker trusts whatever the manager shows; the manager must still refuse it
        import ssl

        ctx.verify_mode = ssl.CERT_NONE
    try:
        async with RpcClient(addr, ctx) as client:
            await client.call("raft.members", timeout=5)
        return "accepted"
    except RpcError as e:
        return f"{e.code}: {e.message}"


async def main(addr: str, worker_certs: Path, scratch: Path) -> None:
    foreign_ca = RootCA.create("elsewhere")
    key = new_key()
    foreign = NodeCredentials(foreign_ca.cert_pem,
                              foreign_ca.issue(make_csr(key), NodeIdentity("intruder", "manager", "x")),
                              key_pem(key))
    key_file = KeyFile.load(worker_certs)      # a worker's data key is on its disk (workers are never locked)
    worker = NodeCredentials.load(worker_certs, key_file.open().key_password if key_file else None)
    assert worker is not None, f"no credentials in {worker_certs}"
    print(json.dumps({
        "foreign": await attempt(addr, foreign, scratch / "foreign", trust_any=True),
        "worker": await attempt(addr, worker, scratch / "worker", trust_any=False),
    }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
