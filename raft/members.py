"""The address book a RaftNode keeps beside the core: each member's address (`Member`, carried in
ConfChange contexts), the snapshot wrapper that carries the members and the retired ones with the
application's bytes, and the refused-members file of a forced new cluster (raft/node.py says how
they are used)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import msgpack

from raft.transport import Address, parse_address

REFUSED_FILE = "refused-members"


@dataclass
class Member:
    raft: Address
    extra: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return msgpack.packb({**self.extra, "raft": f"{self.raft[0]}:{self.raft[1]}"})

    @classmethod
    def decode(cls, data: bytes) -> Member:
        try:
            obj = msgpack.unpackb(data)
            raft = parse_address(obj.pop("raft"))
        except Exception as exc:
            raise ValueError(f"bad member context {data!r:.80}: {exc}") from exc
        return cls(raft=raft, extra={str(k): str(v) for k, v in obj.items()})


def _wrap_snapshot(members: dict[int, Member], app: bytes, retired: dict[int, Member] | None = None) -> bytes:
    return msgpack.packb({"members": {i: m.encode() for i, m in members.items()}, "app": app,
                          "retired": {i: m.encode() for i, m in (retired or {}).items()}})


@dataclass
class SnapshotData:
    members: dict[int, Member]      # the address book of the members at the snapshot
    app: bytes                      # the state machine's snapshot
    retired: dict[int, Member]      # addresses of members removed before it (absent in old snapshots)


def _unwrap_snapshot(data: bytes) -> SnapshotData:
    obj = msgpack.unpackb(data, strict_map_key=False)
    return SnapshotData({int(i): Member.decode(c) for i, c in obj["members"].items()}, obj["app"],
                        {int(i): Member.decode(c) for i, c in (obj.get("retired") or {}).items()})


def write_refused_members(data_dir: str, members: dict[int, Member]) -> None:
    """Before a node's first start on `data_dir`: refuse these members of an old cluster (see the
    module's docstring). Written atomically and synced."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, REFUSED_FILE)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(msgpack.packb({i: m.encode() for i, m in members.items()}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_refused_members(data_dir: str) -> dict[int, Member]:
    try:
        with open(os.path.join(data_dir, REFUSED_FILE), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    return {int(i): Member.decode(c) for i, c in msgpack.unpackb(data, strict_map_key=False).items()}


