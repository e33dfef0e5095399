"""Read-only accessors of a RaftNode (raft/node.py): role, leader, configuration, indexes and status,
read from its core (defaults while the node has not started). Nothing here changes the node."""

from __future__ import annotations

from typing import Any

from raft.core import RaftCore
from raft.members import Member
from raft.types import HardState, Role


class NodeView:
    """Mixed into RaftNode, which sets these attributes."""

    id: int
    core: RaftCore | None
    members: dict[int, Member]
    ticks: int

    @property
    def role(self) -> Role:
        return self.core.role if self.core is not None else Role.FOLLOWER

    @property
    def leader(self) -> int:
        return self.core.leader if self.core is not None else 0

    @property
    def voters(self) -> tuple[int, ...]:
        return self.core.conf.voters if self.core is not None else ()

    @property
    def learners(self) -> tuple[int, ...]:
        return self.core.conf.learners if self.core is not None else ()

    def match_index(self, peer: int) -> int:
        """On the leader: the highest log index known to be replicated on `peer` (0 if unknown)."""
        if self.core is None or not self.is_leader:
            return 0
        progress = self.core.prs.get(peer)
        return progress.match if progress is not None else 0

    @property
    def commit_index(self) -> int:
        return self.core.commit_index if self.core is not None else 0

    @property
    def applied_index(self) -> int:
        return self.core.applied if self.core is not None else 0

    @property
    def is_leader(self) -> bool:
        return self.core is not None and self.core.role is Role.LEADER

    @property
    def removed(self) -> bool:
        """This node knows that a committed configuration excludes it: a member told it so
        (REMOVED), or it applied its own removal. It does not campaign while this holds."""
        return self.core is not None and self.core.removed

    def hard_state(self) -> HardState:
        assert self.core is not None
        return HardState(self.core.term, self.core.vote, self.core.commit_index)

    def status(self) -> dict[str, Any]:
        if self.core is None:
            return {"id": self.id, "role": "stopped"}
        st = self.core.status()
        st["ticks"] = self.ticks
        st["members"] = {i: {"raft": f"{m.raft[0]}:{m.raft[1]}", **m.extra} for i, m in self.members.items()}
        return st
