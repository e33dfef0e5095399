"""A linearizability checker for key-value histories (Wing & Gong's search with Lowe's memoisation,
the algorithm Porcupine uses), partitioned per key.

Theory of operation
-------------------
A history is a set of operations, each with a call time and a return time. A history is
linearizable if every operation can be given a point between its call and return such that the
sequence of points is a legal run of the model (here: one register per key, `put` sets it, `get`
must observe the latest `put`). Keys are independent, so each key's sub-history is checked alone.

The search walks a doubly linked list of call/return events in time order. At a call it tries to
linearize that operation now (if the model allows), removing its call and return from the list
("lifting"); at a return whose operation is not linearized yet it has gone too far and
backtracks. The cache of (linearized set, model state) pairs already explored makes it practical.

An operation whose outcome is unknown (a write that timed out: it may or may not have happened)
has its return at +infinity, so it may be linearized anywhere after its call, including after
everything else, where it affects nothing. Reads with unknown outcome carry no information and
should be left out of the history.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

INFINITY = float("inf")


@dataclass(frozen=True)
class Op:
    client: int
    key: str
    kind: str                    # "put" or "get"
    value: str | None            # put: the value written; get: the value observed (None = absent)
    call: float
    ret: float | None            # None: unknown outcome (a put that timed out)

    def __post_init__(self) -> None:
        if self.kind not in ("put", "get"):
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if self.kind == "get" and self.ret is None:
            raise ValueError("a get with unknown outcome carries no information; leave it out")
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"operation returns ({self.ret}) before it is called ({self.call})")


class CheckBudgetExceeded(RuntimeError):
    """The search explored more states than allowed; the answer is unknown."""


@dataclass
class CheckResult:
    ok: bool
    key: str | None = None       # the first key whose history is not linearizable
    ops: tuple[Op, ...] = ()

    def describe(self) -> str:
        if self.ok:
            return "linearizable"
        lines = [f"history of key {self.key!r} is not linearizable:"]
        for op in sorted(self.ops, key=lambda o: o.call):
            ret = "?" if op.ret is None else f"{op.ret:g}"
            lines.append(f"  client {op.client}: {op.kind}({op.value!r}) [{op.call:g}, {ret}]")
        return "\n".join(lines)


def _step(state: str | None, op: Op) -> tuple[bool, str | None]:
    if op.kind == "put":
        return True, op.value
    return op.value == state, state


def check_register(ops: list[Op], budget: int = 2_000_000) -> bool:
    """Is this single-key history linearizable (initial value: absent)?"""
    n = len(ops)
    if n == 0:
        return True
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        events.append((INFINITY if op.ret is None else op.ret, 1, i))
    events.sort()
    # Nodes 1..len(events) in a doubly linked list with head 0; -1 is the end.
    size = len(events)
    nxt = list(range(1, size + 2))
    nxt[size] = -1
    prv = list(range(-1, size))
    is_call = [False] * (size + 1)
    op_of = [0] * (size + 1)
    ret_node = [0] * n
    call_nodes = [0] * n
    for node, (_, kind, i) in enumerate(events, start=1):
        is_call[node] = kind == 0
        op_of[node] = i
        if kind == 0:
            call_nodes[i] = node
        else:
            ret_node[i] = node
    match = [0] * (size + 1)
    for i in range(n):
        match[call_nodes[i]] = ret_node[i]

    def lift(node: int) -> None:
        for x in (node, match[node]):
            nxt[prv[x]] = nxt[x]
            if nxt[x] != -1:
                prv[nxt[x]] = prv[x]

    def unlift(node: int) -> None:
        for x in (match[node], node):
            nxt[prv[x]] = x
            if nxt[x] != -1:
                prv[nxt[x]] = x

    linearized = 0
    state: str | None = None
    cache: set[tuple[int, str | None]] = set()
    stack: list[tuple[int, str | None]] = []
    entry = nxt[0]
    steps = 0
    while nxt[0] != -1:
        steps += 1
        if steps > budget:
            raise CheckBudgetExceeded(f"more than {budget} search steps on {n} operations")
        if entry == -1:
            return False  # pragma: no cover - a return always precedes the end of the list
        if is_call[entry]:
            i = op_of[entry]
            ok, new_state = _step(state, ops[i])
            if ok:
                key = (linearized | (1 << i), new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state, linearized = new_state, key[0]
                    lift(entry)
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
        else:
            if not stack:
                return False
            entry, state = stack.pop()
            linearized &= ~(1 << op_of[entry])
            unlift(entry)
            entry = nxt[entry]
    return True


def check_history(ops: list[Op]) -> CheckResult:
    """Check a multi-key history, one key at a time."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    for key in sorted(by_key):
        if not check_register(by_key[key]):
            return CheckResult(False, key, tuple(by_key[key]))
    return CheckResult(True)
