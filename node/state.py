"""What a node remembers of its swarm across restarts: `<data-dir>/swarm/state.json`.

The file is replaced atomically (temp file, fsync, rename), so a crash leaves either the old
or the new state. Its absence means the node is in no swarm.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ca.node_tls import write_atomic


@dataclass
class LocalSwarmState:
    node_id: str
    cluster_id: str
    role: str                       # "manager" | "worker": what this node runs now
    advertise_addr: str             # host:port others use to reach this node's cluster port
    listen_addr: str
    managers: list[str] = field(default_factory=list)   # cluster addresses of known managers
    raft_id: int = 0                # this node's Raft member ID while it is a manager

    @staticmethod
    def path(data_dir: Path) -> Path:
        return data_dir / "swarm" / "state.json"

    @classmethod
    def load(cls, data_dir: Path) -> LocalSwarmState | None:
        try:
            doc = json.loads(cls.path(data_dir).read_text())
        except FileNotFoundError:
            return None
        return cls(**doc)

    def save(self, data_dir: Path) -> None:
        write_atomic(self.path(data_dir), json.dumps(asdict(self), indent=1).encode())

    @staticmethod
    def certs_dir(data_dir: Path) -> Path:
        return data_dir / "swarm" / "certificates"

    @staticmethod
    def raft_dir(data_dir: Path) -> Path:
        return data_dir / "swarm" / "raft"


def new_raft_id() -> int:
    """A random Raft member ID for a node that becomes a manager (never 0)."""
    return int.from_bytes(os.urandom(7), "big") or 1
