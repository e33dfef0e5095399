"""The real docker CLI against a lab manager running real containers: service create (attached,
with its convergence progress), ls, ps, inspect, scale, update, rollback, rm."""

from __future__ import annotations

import json

from cli.lab import Lab
from tests.swarm.helpers import eventually


def docker(lab: Lab, *args: str, timeout: float = 45) -> str:
    proc = lab.exec("manager-1", ["docker", *args], timeout=timeout)
    assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}\n{proc.stdout}"
    return proc.stdout + proc.stderr


def test_docker_cli_service_lifecycle_on_the_lab(docker_lab: Lab) -> None:
    lab = docker_lab
    out = docker(lab, "service", "create", "--name", "web", "--replicas", "2", "--update-monitor", "1s",
                 "--update-parallelism", "2", "busybox:latest", "sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait")
    assert "verify: Service web converged" in out or "converged" in out, out
    ls = docker(lab, "service", "ls")
    assert "web" in ls and "2/2" in ls and "replicated" in ls
    ps = docker(lab, "service", "ps", "web")
    assert ps.count("Running") >= 2 and "web.1" in ps and "web.2" in ps
    spec = json.loads(docker(lab, "service", "inspect", "web"))[0]["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 2
    assert "Service Mode:\tReplicated" in docker(lab, "service", "inspect", "--pretty", "web")

    out = docker(lab, "service", "scale", "web=3")
    assert "web scaled to 3" in out and "converged" in out, out
    out = docker(lab, "service", "update", "--env-add", "COLOR=blue", "web")
    assert "converged" in out, out
    env = json.loads(docker(lab, "service", "inspect", "web"))[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert env == ["COLOR=blue"]
    out = docker(lab, "service", "rollback", "web")
    assert "rollback" in out, out
    env = json.loads(docker(lab, "service", "inspect", "web"))[0]["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert "Env" not in env or env["Env"] in (None, [])
    assert docker(lab, "service", "rm", "web").strip() == "web"
    eventually(lambda: "web" not in docker(lab, "service", "ls"), what="the service to be gone")
