"""The `shoal swarm` and `shoal node` commands on lab hosts, as a user types them."""

from __future__ import annotations

import json
import re
import sys

from cli.lab import Lab
from tests.swarm.helpers import eventually


def shoal(lab: Lab, node: str, *args: str, ok: bool = True) -> str:
    proc = lab.exec(node, [sys.executable, "-m", "cli.main", *args], timeout=60)
    if ok:
        assert proc.returncode == 0, f"shoal {' '.join(args)}: {proc.stderr}"
    else:
        assert proc.returncode == 1, f"shoal {' '.join(args)} should fail: {proc.stdout}"
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        return proc.stderr
    return proc.stdout


def test_shoal_swarm_and_node_commands(make_lab) -> None:
    lab: Lab = make_lab(managers=1, workers=2, swarm=False)
    m = lab.node("manager-1").address
    out = shoal(lab, "manager-1", "swarm", "init", "--advertise-addr", m, "--dispatcher-heartbeat", "2s")
    assert "is now a manager" in out and "shoal swarm join --token SWMTKN-1-" in out and f"{m}:2377" in out
    worker_token = shoal(lab, "manager-1", "swarm", "join-token", "-q", "worker").strip()
    manager_token = shoal(lab, "manager-1", "swarm", "join-token", "-q", "manager").strip()
    assert worker_token != manager_token
    assert "joined a swarm as a worker" in shoal(lab, "worker-1", "swarm", "join", "--token", worker_token,
                                                 f"{m}:2377")
    assert "joined a swarm as a manager" in shoal(lab, "worker-2", "swarm", "join", "--token", manager_token,
                                                  f"{m}:2377")
    err = shoal(lab, "worker-1", "swarm", "join", "--token", worker_token, f"{m}:2377", ok=False)
    assert "already part of a swarm" in err

    spec = json.loads(shoal(lab, "manager-1", "swarm", "inspect"))["Spec"]
    assert spec["Dispatcher"]["HeartbeatPeriod"] == 2_000_000_000
    assert "Swarm updated." in shoal(lab, "manager-1", "swarm", "update", "--task-history-limit", "2")
    spec = json.loads(shoal(lab, "worker-2", "swarm", "inspect"))["Spec"]
    assert spec["Orchestration"]["TaskHistoryRetentionLimit"] == 2
    err = shoal(lab, "manager-1", "swarm", "update", "--dispatcher-heartbeat", "soon", ok=False)
    assert "--dispatcher-heartbeat" in err
    rotated = shoal(lab, "manager-1", "swarm", "join-token", "--rotate", "worker")
    assert "Successfully rotated worker join token." in rotated and worker_token not in rotated

    listing = eventually(lambda: (lambda o: o if o.count("Ready") == 3 else "")(shoal(lab, "manager-1", "node", "ls")),
                         what="three ready nodes")
    assert "Leader" in listing and "Reachable" in listing
    assert re.search(r"Hostname:\s+worker-1", shoal(lab, "manager-1", "node", "inspect", "--pretty", "worker-1"))
    shoal(lab, "manager-1", "node", "update", "--availability", "drain", "--label-add", "disk=ssd", "worker-1")
    node = json.loads(shoal(lab, "manager-1", "node", "inspect", "worker-1"))[0]
    assert node["Spec"]["Availability"] == "drain" and node["Spec"]["Labels"] == {"disk": "ssd"}
    assert "Manager worker-2 demoted in the swarm." in shoal(lab, "manager-1", "node", "demote", "worker-2")
    eventually(lambda: "Reachable" not in shoal(lab, "manager-1", "node", "ls"), timeout=30,
               what="the demoted node to leave the managers")
    assert "Node manager-1 is already a manager." in shoal(lab, "manager-1", "node", "promote", "manager-1")
    err = shoal(lab, "manager-1", "node", "rm", "worker-1", ok=False)
    assert "is not down and can't be removed" in err
    assert "Node left the swarm." in shoal(lab, "worker-1", "swarm", "leave")
    shoal(lab, "manager-1", "node", "rm", "--force", "worker-1")
    assert "worker-1" not in shoal(lab, "manager-1", "node", "ls")
    err = shoal(lab, "worker-1", "node", "ls", ok=False)
    assert "is not a swarm manager" in err
    err = shoal(lab, "manager-1", "swarm", "leave", ok=False)
    assert "Use `--force`" in err
