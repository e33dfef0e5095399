"""ReadIndex bookkeeping on the leader.

Theory of operation
-------------------
A read arriving at the leader records the current commit index and a request context, then the
leader broadcasts a heartbeat carrying that context. Once a majority of voters (the leader
included) has answered a heartbeat carrying the context, the leader knows it was still leader
when the read arrived, so every state that includes the recorded commit index is linearizable for
that read. Requests are confirmed in arrival order: confirming one confirms all earlier ones,
because their heartbeats were sent no later.

Requests are only recorded once the leader has committed an entry of its own term (before that
its commit index may lag what earlier leaders committed); the core queues them until then.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ReadRequest:
    index: int          # commit index when the request arrived
    ctx: bytes          # the request's unique context
    frm: int            # the node that asked (the leader itself for local reads)
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self._pending: dict[bytes, ReadRequest] = {}
        self._queue: list[bytes] = []

    def add_request(self, index: int, ctx: bytes, frm: int, self_id: int) -> bool:
        """Record a read; False if a read with this context is already pending."""
        if ctx in self._pending:
            return False
        self._pending[ctx] = ReadRequest(index, ctx, frm, {self_id})
        self._queue.append(ctx)
        return True

    def recv_ack(self, frm: int, ctx: bytes) -> set[int] | None:
        req = self._pending.get(ctx)
        if req is None:
            return None
        req.acks.add(frm)
        return req.acks

    def confirm(self, ctx: bytes) -> list[ReadRequest]:
        """Pop and return the requests up to and including `ctx`, in arrival order."""
        if ctx not in self._pending:
            return []
        pos = self._queue.index(ctx)
        done = [self._pending.pop(c) for c in self._queue[: pos + 1]]
        del self._queue[: pos + 1]
        return done

    def last_pending_ctx(self) -> bytes:
        return self._queue[-1] if self._queue else b""

    def __len__(self) -> int:
        return len(self._queue)

    def reset(self) -> None:
        self._pending.clear()
        self._queue.clear()
