"""A real 3-process raft.kv cluster on loopback: SIGKILL the leader under load, several times.

Checks: no acknowledged write is lost (every acked key is read back linearizably at the end), a new
leader takes writes after each kill, and the killed node, restarted, catches up — by snapshot, since
it is kept down until the leader has compacted past its log.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from bench.support.kvcluster import KVClient, KVCluster
from tests.support.wait import async_wait_until

SNAPSHOT_EVERY = 50
WRITERS = 8
ROUNDS = 3


@pytest.fixture
async def cluster(tmp_path: Path):
    c = KVCluster(str(tmp_path), 3, extra_args=["--snapshot-every", str(SNAPSHOT_EVERY)])
    try:
        yield c
    finally:
        c.kill_all_now()
        for n in c.nodes.values():
            if n.proc is not None:
                await n.proc.wait()


async def test_leader_sigkill_loses_no_acked_write_and_restarted_node_catches_up(cluster: KVCluster) -> None:
    await cluster.start_all()
    acked: dict[str, bytes] = {}
    stop = asyncio.Event()

    async with aiohttp.ClientSession() as session:
        client = KVClient(cluster, session)

        async def writer(w: int) -> None:
            own = KVClient(cluster, session)
            seq = 0
            while not stop.is_set():
                key, value = f"w{w}-{seq}", f"value-{w}-{seq}".encode()
                seq += 1
                try:
                    if await own.put(key, value, timeout=5):
                        acked[key] = value
                except TimeoutError:
                    pass    # unacknowledged: may or may not be applied; never checked

        async def acks_grow_by(n: int, timeout: float = 30) -> None:
            target = len(acked) + n
            await async_wait_until(lambda: asyncio.sleep(0, len(acked) >= target), timeout,
                                   what=f"{n} more acked writes")

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(writer(w)) for w in range(WRITERS)]
            await acks_grow_by(100)
            for rnd in range(ROUNDS):
                old = await client.leader()
                before = await client.status(old)
                assert before is not None
                await cluster.kill_and_wait(old)
                killed_at = time.monotonic()
                assert await client.put(f"probe-{rnd}", b"after-kill", timeout=10)
                acked[f"probe-{rnd}"] = b"after-kill"
                failover = time.monotonic() - killed_at
                new = await client.leader()
                assert new != old
                # Keep the old leader down until the new one compacted well past the old one's log.
                async def compacted_past(new: int = new, last: int = before["last_index"]) -> bool:
                    st = await client.status(new)
                    return bool(st and st["snapshot_index"] > last + 2 * WRITERS)
                await async_wait_until(compacted_past, 30, what="the new leader to compact past the dead node")
                await cluster.start(old)

                async def caught_up(old: int = old, new: int = new, last: int = before["last_index"]) -> bool:
                    a, b = await client.status(old), await client.status(new)
                    return bool(a and b and a["applied"] >= b["commit"] - 2 * WRITERS
                                and a["snapshot_index"] > last)
                await async_wait_until(caught_up, 30, what=f"node {old} to catch up")
                print(f"round: killed leader {old}, next ack after {failover:.3f}s, new leader {new}")
            await acks_grow_by(50)
            stop.set()
            for t in tasks:
                await t

        assert len(acked) > 300
        reader = KVClient(cluster, session)
        missing = [k for k, v in acked.items() if await reader.get(k) != v]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"

        # All three replicas converge on the same applied state.
        async def converged() -> bool:
            sts = [await client.status(i) for i in cluster.nodes]
            return all(sts) and len({(s["applied"], s["keys"]) for s in sts if s}) == 1
        await async_wait_until(converged, 20, what="replicas to converge")


async def test_membership_endpoints_add_learner_promote_and_remove(tmp_path: Path) -> None:
    c = KVCluster(str(tmp_path), 4, founders=3)     # node 4 starts empty, with --join
    c.extra_args = ["--snapshot-every", "20"]
    try:
        await asyncio.gather(*(c.start(i) for i in (1, 2, 3)))
        async with aiohttp.ClientSession() as session:
            client = KVClient(c, session)
            for i in range(60):
                assert await client.put(f"k{i}", str(i).encode())
            await c.start(4, join=True)
            leader = c.nodes[await client.leader()]
            new = c.nodes[4]
            base = f"http://{leader.http}"
            async with session.post(f"{base}/members", json={"id": "four"}) as r:
                assert r.status == 400 and "id must be a positive integer" in (await r.json())["error"]
            async with session.post(f"{base}/members", json={"id": 4, "raft": new.raft, "http": new.http,
                                                             "learner": True}) as r:
                assert r.status == 200, await r.text()
                assert 4 in (await r.json())["learners"]

            async def learner_caught_up() -> bool:
                st = await client.status(4)
                return bool(st and st["applied"] >= 60 and st["keys"] == 60)
            await async_wait_until(learner_caught_up, 20, what="the learner to catch up")
            async with session.post(f"{base}/members/4/promote") as r:
                assert r.status == 200, await r.text()
                assert 4 in (await r.json())["voters"]
            # The new voter serves linearizable reads itself.
            async with session.get(f"http://{new.http}/kv/k59") as r:
                assert r.status == 200 and await r.read() == b"59"
            async with session.delete(f"{base}/members/4") as r:
                assert r.status == 200, await r.text()
                conf = await r.json()
                assert 4 not in conf["voters"] and 4 not in conf["learners"]
            assert await client.put("after-removal", b"ok")
    finally:
        c.kill_all_now()
        for n in c.nodes.values():
            if n.proc is not None:
                await n.proc.wait()
