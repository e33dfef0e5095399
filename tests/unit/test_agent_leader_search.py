"""How the agent searches for the leader (worker/agent/agent.py, `_session_loop`), found by the
swarm chaos test: while the managers elect a new leader after the old one died, followers still
name the dead one, and the agent used to go back to it at each such answer, a tight loop of
connection attempts (~50 a second per agent) that loaded every node just then. Now a manager that
failed is skipped until all were tried, then the agent pauses; an opened session that ends starts
a fresh search at once. `_session` is replaced by a scripted fake; no sleeps, deadlines only."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Callable

from aio import cancel_and_wait
from rpc.errors import NotLeaderError
from tests.support.fake_executor import FakeExecutor
from worker.agent.agent import Agent

DEAD, F1, F2 = "198.18.0.13:2377", "198.18.0.11:2377", "198.18.0.12:2377"


def make_agent() -> Agent:
    return Agent("node-1", [DEAD, F1, F2], lambda: ssl.create_default_context(), FakeExecutor(),
                 lambda: {}, "198.18.0.21")


async def search(agent: Agent, answer: Callable[[str], None], attempts: int) -> list[tuple[float, str]]:
    """Run the agent's search with `answer(addr)` in place of a session until `attempts` were made
    or a session opened (`answer` returned); returns (monotonic time, addr) of each attempt."""
    made: list[tuple[float, str]] = []
    enough = asyncio.Event()

    async def fake_session(addr: str) -> None:
        made.append((time.monotonic(), addr))
        if len(made) < attempts:
            answer(addr)  # raises, as a session that failed or ended
        enough.set()  # enough attempts, or a session `answer` lets open: it holds until cancelled
        await asyncio.Event().wait()

    agent._session = fake_session  # type: ignore[method-assign]
    loop = asyncio.ensure_future(agent._session_loop())
    try:
        async with asyncio.timeout(10):
            await enough.wait()
    finally:
        await cancel_and_wait([loop])
    return made


def dead_leader_named_by_followers(addr: str) -> None:
    if addr == DEAD:
        raise OSError(111, "Connection refused")
    raise NotLeaderError("not the leader", details={"leader_addr": DEAD})


def test_followers_naming_a_dead_leader_make_the_agent_pause_not_spin() -> None:
    agent = make_agent()
    agent._leader_hint = DEAD
    made = asyncio.run(search(agent, dead_leader_named_by_followers, attempts=10))
    addrs = [a for _, a in made]
    # Each round tries every manager once (the dead leader first, it was the hint), never the dead
    # one again within a round; rounds are separated by pauses of the growing backoff (with
    # jitter, at least half of 0.1, 0.2 and 0.4 s).
    rounds = [addrs[i:i + 3] for i in range(0, 9, 3)]
    assert all(sorted(r) == sorted([DEAD, F1, F2]) for r in rounds), addrs
    assert addrs[0] == DEAD
    pauses = [made[i][0] - made[i - 1][0] for i in (3, 6, 9)]
    assert pauses[0] >= 0.05 and pauses[1] >= 0.1 and pauses[2] >= 0.2, pauses


def test_a_follower_naming_a_live_leader_is_followed_at_once() -> None:
    agent = make_agent()
    new_leader = F2

    def answer(addr: str) -> None:
        if addr == DEAD:
            raise OSError(111, "Connection refused")
        if addr != new_leader:
            raise NotLeaderError("not the leader", details={"leader_addr": new_leader})

    agent._leader_hint = DEAD
    made = asyncio.run(search(agent, answer, attempts=10))
    addrs = [a for _, a in made]
    assert addrs[0] == DEAD and addrs[-1] == new_leader, addrs
    assert made[-1][0] - made[0][0] < 0.05, "no pause on the way to a named live leader"


def test_an_opened_session_that_ends_starts_the_pauses_from_the_shortest() -> None:
    agent = make_agent()
    opened = [0]

    def answer(addr: str) -> None:
        # Every manager opens a session that then breaks (the leader of the moment goes away):
        # the pause after each round stays the shortest (0.05 to 0.1 s), never grown by earlier
        # failures (it would be at least 0.2 s by the third).
        agent._session_id = f"s-{opened[0]}"
        opened[0] += 1
        raise OSError(104, "Connection reset by peer")

    made = asyncio.run(search(agent, answer, attempts=12))
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(made)]
    assert max(gaps) < 0.2, gaps
