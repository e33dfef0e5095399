"""Jobs through the real docker CLI on a lab: `--mode replicated-job` and `--mode global-job`
run their tasks to completion (the CLI waits for the job, as with Docker), `service ls` shows
the completions, and an update runs the job again."""

from __future__ import annotations

import json

from cli.lab import Lab
from tests.compat.test_docker_cli_lab_services import docker
from tests.swarm.helpers import eventually


def test_docker_cli_replicated_and_global_jobs(docker_lab: Lab) -> None:
    lab = docker_lab
    out = docker(lab, "service", "create", "--name", "batch", "--mode", "replicated-job", "--replicas", "4",
                 "--max-concurrent", "2", "busybox:latest", "sh", "-c", "echo batch done", timeout=60)
    assert "job complete" in out, out
    assert "batch" in docker(lab, "service", "ls", "--filter", "name=batch")
    status = json.loads(docker(lab, "service", "ls", "--filter", "name=batch", "--format", "{{json .}}"))
    assert status["Replicas"].endswith("(4/4 completed)"), status
    tasks = docker(lab, "service", "ps", "batch", "--format", "{{.CurrentState}} {{.DesiredState}}")
    assert tasks.count("Complete") >= 8, tasks           # 4 tasks, each complete and desired complete

    out = docker(lab, "service", "create", "--name", "everywhere", "--mode", "global-job",
                 "busybox:latest", "true", timeout=60)
    assert "job complete" in out, out
    nodes = {line for line in docker(lab, "service", "ps", "everywhere", "--format", "{{.Node}}").split()}
    assert nodes == {"manager-1", "worker-1"}

    docker(lab, "service", "update", "--force", "--detach", "batch")
    def rerun() -> bool:
        service = json.loads(docker(lab, "service", "inspect", "batch"))[0]
        lines = docker(lab, "service", "ps", "batch", "--format", "{{.CurrentState}}").splitlines()
        return service["JobStatus"]["JobIteration"]["Index"] >= 1 and \
            sum(line.startswith("Complete") for line in lines) == 8
    eventually(rerun, what="the job's second iteration to complete")
