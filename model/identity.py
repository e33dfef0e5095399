"""Who a peer on the cluster port is, as its certificate says (issued by ca/, read by rpc/)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    role: str          # "manager" | "worker"
    cluster_id: str
