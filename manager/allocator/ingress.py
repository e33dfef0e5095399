"""The `ingress` network that `swarm init` stores with the new cluster.

Docker stores it unallocated (`{Name: ingress, Ingress: true}`, no labels); the allocator gives
it the first subnet of the pools and the first VXLAN id, so with the default pools it gets
10.0.0.0/24 and 4096, and the first user overlay 10.0.1.0/24 and 4097.
"""

from __future__ import annotations

from model import Network, new_id

INGRESS_NAME = "ingress"


def ingress_network(network_id: str | None = None) -> Network:
    """A fresh, unallocated ingress network object, to create in the init transaction."""
    return Network(id=network_id or new_id(), spec={
        "Name": INGRESS_NAME, "Labels": {}, "Driver": "overlay", "Scope": "swarm", "Ingress": True,
    })
