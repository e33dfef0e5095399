"""Lanes to removed and refused members, for a running RaftNode (raft/node.py).

Removed members (raft/removal.py): a member's address is not forgotten when its removal applies; it
moves to `retired`, also kept in snapshots. The core answers a removed node that still talks to us
with REMOVED, and a leader sends REMOVED to a follower whose removal it commits; such a message
opens (or keeps open) lanes to the retired address, which close again `RETIRED_GRACE_ELECTIONS`
election timeouts after the last one sent. So a member removed while it was down or cut off hears
that it is out as soon as it talks to the cluster again, and the cluster keeps no connections open
to old members.

Refused members: a cluster forced anew from one member's state (`write_refused_members` before its
first start, kept in `<data_dir>/refused-members`) names the members of the cluster it left behind.
Their messages never reach the core: each is answered with REMOVED marked `reject`, which tells the
old member it is out whatever its log says (raft/removal.py, "Refused members"). Without it, old
members coming back together could elect a leader of their old configuration whose term the new
cluster would follow, and whose log would overwrite the new one.

Time is the node's tick count, passed in by the caller (`now`).
"""

from __future__ import annotations

from raft.members import Member
from raft.transport import Address, Transport
from raft.types import Message, MessageType

# A removed member's lanes stay open this many election timeouts after the last REMOVED sent to it.
RETIRED_GRACE_ELECTIONS = 4


class RetiredLanes:
    """The addresses of removed (`retired`) and refused members, and the lanes open to them with
    the tick each closes at. `members` is the node's own address book (the same dict, read only)."""

    def __init__(self, node_id: int, transport: Transport, members: dict[int, Member],
                 election_tick: int) -> None:
        self.id = node_id
        self.transport = transport
        self.members = members
        self.grace = RETIRED_GRACE_ELECTIONS * election_tick
        self.retired: dict[int, Member] = {}    # removed members' addresses, so REMOVED reaches them
        self.refused: set[int] = set()          # members of a cluster left behind (REFUSED_FILE)
        self.closing: dict[int, int] = {}       # removed member with open lanes → tick they close at

    def retire(self, node_id: int, member: Member | None, now: int) -> None:
        """Its removal applied: keep its address (when known), and its lanes open a little while,
        so a REMOVED sent with or after the removal reaches it."""
        if member is not None:
            self.retired[node_id] = member
        self.closing[node_id] = now + self.grace

    def readmit(self, node_id: int) -> None:
        """`node_id` is a member again (added back under the same id)."""
        self.retired.pop(node_id, None)
        self.closing.pop(node_id, None)

    def reach(self, peer: int, now: int) -> None:
        """A REMOVED is about to be sent to `peer`: if it is a removed member, make sure lanes to its
        retired address are open for a while."""
        if peer in self.members or peer == self.id:
            return
        member = self.retired.get(peer)
        if member is None:
            return      # never knew its address (it is not told; Raft promises it nothing)
        if peer not in self.transport.peers:
            self.transport.set_peer(peer, member.raft)
        self.closing[peer] = now + self.grace

    def refuse(self, msg: Message, term: int, now: int) -> None:
        """Answer a refused member, whatever it sent, with REMOVED marked `reject`."""
        if msg.type is MessageType.REMOVED:
            return
        self.reach(msg.frm, now)
        self.transport.send(Message(MessageType.REMOVED, msg.frm, self.id, max(term, 1), reject=True))

    def close_due(self, now: int) -> None:
        """Close the lanes whose grace is over (unless their member was added back)."""
        for peer, until in list(self.closing.items()):
            if now >= until:
                del self.closing[peer]
                if peer not in self.members:
                    self.transport.remove_peer(peer)

    def update_address(self, node_id: int, addr: Address) -> bool:
        """Point a removed member's REMOVED notices at a new address; False if it is no removed
        member (then the caller updates the live address book)."""
        retired = self.retired.get(node_id)
        if retired is None or node_id in self.members:
            return False
        self.retired[node_id] = Member(addr, retired.extra)
        if node_id in self.transport.peers:
            self.transport.set_peer(node_id, addr)
        return True
