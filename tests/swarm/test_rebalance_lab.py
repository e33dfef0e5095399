"""Rebalancing on the lab (issue 14): 4 tasks on 2 nodes; 2 more nodes join a swarm started with
--rebalance; the tasks spread to 1 per node, and at no sampled moment do fewer than 4 run."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli.lab import Lab
from tests.swarm.helpers import api, eventually, load_busybox_everywhere

pytestmark = pytest.mark.lab

MANAGER = "manager-1"
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]


def join(lab: Lab, name: str) -> None:
    token = api(lab, MANAGER, "GET", "/swarm")["JoinTokens"]["Worker"]
    node = lab.node(name)
    api(lab, name, "POST", "/swarm/join", {"AdvertiseAddr": node.address, "ListenAddr": "0.0.0.0:2377",
                                           "RemoteAddrs": [f"{lab.node(MANAGER).address}:2377"],
                                           "JoinToken": token})


def running_by_host(lab: Lab) -> Counter[str]:
    hosts = {n["ID"]: n["Description"]["Hostname"] for n in api(lab, MANAGER, "GET", "/nodes")}
    tasks = api(lab, MANAGER, "GET", "/tasks", filters={"service": ["web"]})
    return Counter(hosts.get(t["NodeID"], "?") for t in tasks if t["Status"]["State"] == "running")


class Sampler:
    """Counts the service's running tasks over and over in a thread, keeping the lowest count."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count
        self.lowest: int | None = None
        self.samples = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self._count()
            except BaseException as e:   # reported by the test, not lost with the thread
                self.error = e
                return
            self.lowest = n if self.lowest is None else min(self.lowest, n)
            self.samples += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(30)


def test_joining_nodes_get_tasks_moved_to_them_without_dropping_below_the_count(
        make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = make_lab(managers=1, workers=3)
    load_busybox_everywhere(lab, tmp_path)
    manager = lab.node(MANAGER)
    api(lab, MANAGER, "POST", "/swarm/init", {"AdvertiseAddr": manager.address, "ListenAddr": "0.0.0.0:2377",
                                              "Spec": {"Orchestration": {"Rebalance": True}}})
    join(lab, "worker-1")
    eventually(lambda: len(api(lab, MANAGER, "GET", "/nodes")) == 2, what="worker-1 in the swarm")
    api(lab, MANAGER, "POST", "/services/create", {
        "Name": "web", "Mode": {"Replicated": {"Replicas": 4}},
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": SLEEPER,
                                           "StopGracePeriod": 2_000_000_000}},
        "UpdateConfig": {"Delay": 200_000_000}})
    eventually(lambda: sorted(running_by_host(lab).values()) == [2, 2], timeout=40, what="2 tasks on each of 2 nodes")

    with Sampler(lambda: sum(running_by_host(lab).values())) as sampler:
        join(lab, "worker-2")
        join(lab, "worker-3")
        spread = eventually(lambda: (lambda c: c if sorted(c.values()) == [1, 1, 1, 1] else None)(running_by_host(lab)),
                            timeout=60, what="1 task on each of 4 nodes")
    assert spread is not None and set(spread) == {"manager-1", "worker-1", "worker-2", "worker-3"}
    assert sampler.error is None and sampler.samples > 10
    assert sampler.lowest is not None and sampler.lowest >= 4, f"only {sampler.lowest} tasks ran at one moment"
