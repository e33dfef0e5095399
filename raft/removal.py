"""The removed-member side of the Raft core (a mixin of RaftCore, pure like it).

Removed members (Raft dissertation §4.2.3): a node removed while it was cut off never hears of it
from the leader, which stops replicating to it; it may even still lead a stale term. So a node
answers a message from a peer that is in neither its committed nor its latest configuration with
REMOVED, carrying its commit point (index, term), instead of acting on it — unless the message is one
a member could need from a node it has not heard of yet: a leader's (or its transfer's) message of
the current term or later, or a vote request it could grant. The peer checks the claim against its
own log: if it lacks that committed entry, a committed configuration newer than its log excludes it,
so it steps down and stops campaigning (it could not win with that entry missing anyway) until its
log catches up; if it holds the entry, its own log already decides, and it just learns the commit.
A leader also sends REMOVED to a follower whose removal it has just committed. `removed` (also in
`SoftState` and `status()`) is true while a notice holds or after this node committed its own
removal; it is volatile (a restarted removed node relearns it from its log or its first contact)
and turns false again if the node is added back under the same id.

Refused members: the logs of two clusters cannot be compared (a cluster forced anew from one member's
state starts a new log, whose (index, term) pairs may well occur in an old member's log), so a driver
that knows a peer belongs to a cluster it left behind refuses it outright: it answers with REMOVED
with `reject` set, and never steps its messages into the core. A node told so is refused until it
restarts, whatever its log says: it steps down, never campaigns, and grants no vote or pre-vote, so
the other members of its old configuration cannot make a quorum with it either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from raft.confchange import ConfHistory, is_member
from raft.log import RaftLog
from raft.types import ConfState, Entry, EntryType, Message, MessageType, Role

VOTE_REQUESTS = (MessageType.PRE_VOTE, MessageType.VOTE)
FROM_LEADER = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)


class RemovalSide:
    log: RaftLog
    conf_history: ConfHistory
    term: int
    role: Role
    _removal_notice: tuple[int, int] | None    # (index, term) of a peer's REMOVED
    _removed_by_log: bool                      # the last committed change about this node removed it
    _refused: bool                             # a REMOVED with reject: refused whatever our log says

    if TYPE_CHECKING:   # provided by RaftCore and LeaderSide; no runtime stubs to shadow them
        @property
        def id(self) -> int: ...

        @property
        def conf(self) -> ConfState: ...

        def conf_at(self, index: int) -> ConfState: ...

        def _send(self, msg: Message) -> None: ...

        def _become_follower(self, term: int, leader: int) -> None: ...

    @property
    def removed(self) -> bool:
        """This node knows that a committed configuration excludes it: a peer's REMOVED notice about a
        commit beyond our log, or our own committed removal (and no re-add since, even uncommitted)."""
        return self._barred() or (self._removed_by_log and not is_member(self.conf, self.id))

    def _barred(self) -> bool:
        """We must not campaign: a notice says a committed configuration beyond our log excludes us,
        or we were refused outright."""
        return self._refused or self._notice_active()

    def _log_covers(self, index: int, term: int) -> bool:
        return index <= self.log.snapshot_index or self.log.term(index) == term

    def _notice_active(self) -> bool:
        notice = self._removal_notice
        return notice is not None and not self._log_covers(*notice)

    def _note_committed(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            if e.type is EntryType.CONF_CHANGE:
                if is_member(self.conf_at(e.index), self.id):
                    self._removed_by_log = False
                elif is_member(self.conf_at(e.index - 1), self.id):
                    self._removed_by_log = True

    def _is_removed_peer(self, peer: int) -> bool:
        """`peer` is in neither our latest nor our committed configuration (which has voters)."""
        if is_member(self.conf, peer):
            return False
        committed = self.conf_at(max(self.log.committed, self.conf_history.base_index))
        return bool(committed.voters) and not is_member(committed, peer)

    def _heeds_removed_peer(self, msg: Message) -> bool:
        """Messages from outside our configuration that we act on all the same: the peer may have been
        added by entries we lack. A leader of a stale term, or a candidate whose log is behind ours, is
        not such a peer (it would have our committed entries), so it is told it is out instead."""
        if msg.type in VOTE_REQUESTS:
            return self.log.is_up_to_date(msg.index, msg.log_term)
        return msg.term >= self.term and (
            msg.type in FROM_LEADER or msg.type in (MessageType.TIMEOUT_NOW, MessageType.READ_INDEX_RESP))

    def _send_removed_notice(self, peer: int) -> None:
        index = max(self.log.committed, self.log.snapshot_index)
        term = self.log.term(index)
        assert term is not None
        self._send(Message(MessageType.REMOVED, peer, self.id, self.term, log_term=term, index=index))

    def _handle_removed_notice(self, msg: Message) -> None:
        if msg.reject:
            # Refused outright (see "Refused members"); its term belongs to another log: not ours.
            self._refused = True
            if self.role is not Role.FOLLOWER:
                self._become_follower(self.term, 0)
            return
        if msg.term > self.term:
            self._become_follower(msg.term, 0)
        if self._log_covers(msg.index, msg.log_term):
            # We hold that committed entry, so our own configuration already says whether we are in;
            # the entry being committed is news we can use.
            if self.role is Role.FOLLOWER and msg.index > self.log.committed:
                self.log.commit_to(msg.index)
            return
        if self._removal_notice is None or msg.index > self._removal_notice[0]:
            self._removal_notice = (msg.index, msg.log_term)
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, 0)
