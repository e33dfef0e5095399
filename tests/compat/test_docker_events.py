"""`docker events` (the real CLI) on a lab: the manager streams a service create, a scale and a
node drain as they happen, in dockerd's Type/Action/Actor shapes; the worker streams its task
containers' create/start and, once drained, die/stop; filters and a bad filter's 400; a `since`
in the past replays the swarm events."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable
from typing import Any

from cli.lab import Lab


class EventStream:
    """`docker events --format '{{json .}}'` running on a lab node, read with deadlines."""

    def __init__(self, lab: Lab, node: str, *args: str) -> None:
        self.proc = subprocess.Popen(lab.exec_argv(node, ["docker", "events", *args, "--format", "{{json .}}"]),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.seen: list[dict[str, Any]] = []
        self._rest = b""

    def wait_for(self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 45) -> dict[str, Any]:
        for event in self.seen:
            if check(event):
                return event
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, self._rest = (self._rest + chunk).split(b"\n")
            for line in lines:
                event = json.loads(line)
                self.seen.append(event)
                if check(event):
                    return event
        raise AssertionError(f"no event {what} within {timeout}s; seen: {self.seen}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def docker(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(node, ["docker", *args], timeout=45)


def subscribed(lab: Lab, *streams: EventStream) -> None:
    """Until every stream shows a node update made for the purpose (its client has subscribed)."""
    for attempt in range(30):
        assert docker(lab, "manager-1", "node", "update", "--label-add", f"probe={attempt}", "worker-1").returncode == 0
        try:
            for stream in streams:
                stream.wait_for("the probe", lambda e: e["Actor"]["Attributes"].get("name") == "worker-1"
                                and e["Type"] == "node", timeout=1)
            return
        except AssertionError:
            continue
    raise AssertionError("the event streams never showed the probe")


def test_docker_events_stream_service_node_and_container_events(docker_lab: Lab) -> None:
    lab = docker_lab
    began = time.time()
    swarm = EventStream(lab, "manager-1")
    containers = EventStream(lab, "worker-1", "--filter", "type=container", "--filter", "event=start",
                             "--filter", "event=die", "--filter", "event=stop")
    only_nodes = EventStream(lab, "manager-1", "--filter", "type=node")
    try:
        subscribed(lab, swarm, only_nodes)
        proc = docker(lab, "manager-1", "service", "create", "--detach", "--name", "ev", "--constraint",
                      "node.role==worker", "busybox:latest", "sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait")
        assert proc.returncode == 0, proc.stderr
        service_id = proc.stdout.strip()
        created = swarm.wait_for("service create", lambda e: e["Type"] == "service" and e["Action"] == "create")
        assert created["Actor"] == {"ID": service_id, "Attributes": {"name": "ev"}} and created["scope"] == "swarm"
        assert isinstance(created["time"], int) and created["timeNano"] // 10**9 == created["time"]

        started = containers.wait_for("a task container start", lambda e: e["Action"] == "start")
        assert started["Type"] == "container" and started["scope"] == "local"
        attrs = started["Actor"]["Attributes"]
        assert attrs["com.docker.swarm.service.name"] == "ev" and attrs["name"].startswith("ev.1.")
        assert attrs["image"] == "busybox:latest" and started["Actor"]["ID"] == attrs["com.docker.swarm.task.id"]

        assert docker(lab, "manager-1", "service", "scale", "--detach", "ev=2").returncode == 0
        scaled = swarm.wait_for("the scale", lambda e: e["Type"] == "service"
                                and e["Actor"]["Attributes"].get("replicas.new") == "2")
        assert scaled["Action"] == "update" and scaled["Actor"]["Attributes"]["replicas.old"] == "1"

        assert docker(lab, "manager-1", "node", "update", "--availability", "drain", "worker-1").returncode == 0
        drained = swarm.wait_for("the drain", lambda e: e["Type"] == "node"
                                 and e["Actor"]["Attributes"].get("availability.new") == "drain")
        assert drained["Action"] == "update" and drained["Actor"]["Attributes"]["availability.old"] == "active"
        assert drained["Actor"]["Attributes"]["name"] == "worker-1"
        containers.wait_for("a task container dying", lambda e: e["Action"] == "die"
                            and e["Actor"]["Attributes"]["com.docker.swarm.service.name"] == "ev")
        containers.wait_for("a task container stopped", lambda e: e["Action"] == "stop")

        only_nodes.wait_for("the drain (type=node)",
                            lambda e: e["Actor"]["Attributes"].get("availability.new") == "drain")
        assert {e["Type"] for e in only_nodes.seen} == {"node"}
        assert {e["Action"] for e in containers.seen} <= {"start", "die", "stop"}
    finally:
        for stream in (swarm, containers, only_nodes):
            stream.close()

    bad = docker(lab, "manager-1", "events", "--filter", "bogus=1", "--until", "0s")
    assert bad.returncode == 1 and "invalid filter 'bogus'" in bad.stderr

    # Swarm events are kept with the container events in the node's history: a `since` in the
    # past replays them (each manager records its store's events).
    for manager in ("manager-1",):
        # `--until 0s` would send the current whole second (the CLI drops the fraction), which cuts
        # off events of this second and can even fall before `since`: the next whole second instead.
        until = str(int(time.time()) + 1)
        replay = docker(lab, manager, "events", "--since", f"{began:.3f}", "--until", until, "--filter",
                        "type=service", "--filter", "service=ev", "--format", "{{json .}}")
        assert replay.returncode == 0, replay.stderr
        past = [json.loads(line) for line in replay.stdout.splitlines()]
        assert [e["Action"] for e in past][:1] == ["create"] and any(
            e["Actor"]["Attributes"].get("replicas.new") == "2" for e in past), (manager, past)
