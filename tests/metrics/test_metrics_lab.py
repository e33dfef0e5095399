"""A Prometheus scrape of a lab swarm's daemons: /metrics parses with prometheus_client's own
parser, every shoal family it shows is listed in the README (and every listed one is shown),
and the figures move when a service is created and scaled."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.lab import Lab
from tests.support.netns_port import NamespacePort
from tests.swarm.helpers import api, eventually, swarm_lab

pytestmark = pytest.mark.lab

MANAGER, WORKER = "manager-1", "worker-1"
METRICS_PORT = 9323              # on each lab host's own loopback: nothing else listens there
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
README = Path(__file__).resolve().parents[2] / "README.md"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setenv("SHOAL_METRICS_ADDR", str(METRICS_PORT))    # the lab's daemons inherit it
    with swarm_lab("mx", tmp_path_factory.mktemp("img"), managers=1, workers=1) as the_lab:
        yield the_lab


class Scraper:
    def __init__(self, port: NamespacePort) -> None:
        self.url = port.url + "/metrics"
        self.families: set[str] = set()

    def __call__(self) -> Samples:
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
        families = list(text_string_to_metric_families(text))
        self.families = {f.name for f in families}
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def documented() -> set[str]:
    """The metric names the README's metrics table lists (counters without their _total)."""
    section = README.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return {name.removesuffix("_total") for name in re.findall(r"`(shoal_[a-z_]+)`", section)}


def running(lab: Lab) -> int:
    tasks = api(lab, MANAGER, "GET", "/tasks", filters={"service": ["web"], "desired-state": ["running"]})
    return sum(1 for t in tasks if t["Status"]["State"] == "running")


def counting_running(scrape: Scraper, count: int) -> Samples:
    """The first scrape that counts `count` running tasks (the API saw them already)."""
    def check() -> Samples | None:
        samples = scrape()
        return samples if get(samples, "shoal_tasks", state="running") == count else None
    samples = eventually(check, timeout=10, what=f"the scrape to count {count} running tasks")
    assert samples is not None
    return samples


def scale(lab: Lab, replicas: int) -> None:
    service = api(lab, MANAGER, "GET", "/services/web")
    spec = service["Spec"]
    spec["Mode"] = {"Replicated": {"Replicas": replicas}}
    api(lab, MANAGER, "POST", f"/services/{service['ID']}/update", spec, version=service["Version"]["Index"])


def test_a_scrape_parses_is_documented_and_follows_a_scale(lab: Lab) -> None:
    with NamespacePort(lab.node(MANAGER).ns, METRICS_PORT) as mport, \
            NamespacePort(lab.node(WORKER).ns, METRICS_PORT) as wport:
        manager, worker = Scraper(mport), Scraper(wport)
        before = manager()
        shoal = {name for name in manager.families if name.startswith("shoal_") and not name.endswith("_created")}
        assert shoal == documented(), "the README's metrics table and the scrape differ"
        assert get(before, "shoal_raft_is_leader") == 1 and get(before, "shoal_raft_term") >= 1
        assert get(before, "shoal_raft_leader_changes_total") >= 1
        assert get(before, "shoal_nodes", state="ready") == 2
        assert get(before, "shoal_dispatcher_sessions") == 2
        assert get(before, "shoal_tasks", state="running") == 0
        assert get(before, "shoal_raft_fsync_seconds_count") > 0
        assert "shoal_raft_term" not in {n for n, _ in worker()}    # a worker has no Raft to report

        api(lab, MANAGER, "POST", "/services/create", {
            "Name": "web", "Mode": {"Replicated": {"Replicas": 2}},
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": SLEEPER,
                                               "StopGracePeriod": 2_000_000_000}}})
        eventually(lambda: running(lab) == 2, timeout=30, what="2 running tasks")
        two = counting_running(manager, 2)
        services = "shoal_store_objects", {"kind": "services"}
        assert get(two, services[0], **services[1]) == get(before, services[0], **services[1]) + 1
        assert get(two, "shoal_scheduler_latency_seconds_count") == 2
        assert get(two, "shoal_raft_commit_index") > get(before, "shoal_raft_commit_index")
        assert get(two, "shoal_raft_proposal_seconds_count") > get(before, "shoal_raft_proposal_seconds_count")
        assert get(two, "shoal_api_request_seconds_count", method="POST", route="/services/create", code="201") == 1

        scale(lab, 4)
        eventually(lambda: running(lab) == 4, timeout=30, what="4 running tasks")
        four = counting_running(manager, 4)
        assert get(four, "shoal_scheduler_latency_seconds_count") == 4
        assert get(four, "shoal_store_objects", kind="tasks") == 4
        assert get(four, "shoal_api_request_seconds_count", method="POST", route="/services/{ref}/update",
                   code="200") == 1
        starts = "shoal_container_start_seconds_count"
        assert total(four, starts) + total(worker(), starts) == 4      # each node times the containers it starts
