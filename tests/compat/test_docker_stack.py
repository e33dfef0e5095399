"""`docker stack deploy/services/ps/rm` against a lab manager: the compose-file client, which
sends specs the plain `service create` does not (empty enum strings, a stack network, labels,
secrets and configs it creates from files)."""

from __future__ import annotations

import json

from cli.lab import Lab
from tests.compat.test_docker_cli_lab_services import docker
from tests.swarm.helpers import eventually

STACK = """\
version: "3.8"
secrets:
  token:
    file: ./token.txt
configs:
  site:
    file: ./site.conf
services:
  web:
    image: busybox:latest
    command: ["sh", "-c", "cat /run/secrets/token /etc/site.conf; trap 'exit 0' TERM; sleep 100000 & wait"]
    secrets: [token]
    configs:
      - source: site
        target: /etc/site.conf
    environment:
      COLOR: "{color}"
    deploy:
      replicas: 3
      update_config:
        parallelism: 3
        monitor: 1s
  agent:
    image: busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
    deploy:
      mode: global
"""


def services(lab: Lab) -> dict[str, str]:
    """NAME -> REPLICAS of `docker stack services st`."""
    out = docker(lab, "stack", "services", "st", "--format", "{{.Name}} {{.Replicas}}")
    return dict(line.split() for line in out.splitlines() if line.strip())


def test_docker_stack_deploy_update_and_rm(docker_lab: Lab, tmp_path) -> None:
    lab = docker_lab
    compose = tmp_path / "stack.yml"
    compose.write_text(STACK.format(color="blue"))
    (tmp_path / "token.txt").write_text("s3cret-token\n")
    (tmp_path / "site.conf").write_text("listen=8080\n")
    out = docker(lab, "stack", "deploy", "-c", str(compose), "st")
    assert "Creating network st_default" in out and "Creating service st_web" in out, out
    eventually(lambda: services(lab) == {"st_web": "3/3", "st_agent": "2/2"}, what="the stack to run")
    web = json.loads(docker(lab, "service", "inspect", "st_web"))[0]["Spec"]
    assert web["Labels"]["com.docker.stack.namespace"] == "st"
    assert web["UpdateConfig"]["Order"] == "stop-first"        # sent as "", shown as the default
    assert "st" in docker(lab, "stack", "ls")
    assert {"st_token"} <= set(docker(lab, "secret", "ls", "--format", "{{.Name}}").split())
    eventually(lambda: docker(lab, "service", "logs", "st_web").count("s3cret-token") == 3
               and docker(lab, "service", "logs", "st_web").count("listen=8080") == 3,
               what="every web task to read its secret and config")

    compose.write_text(STACK.format(color="green"))
    docker(lab, "stack", "deploy", "-c", str(compose), "st")

    def updated() -> bool:
        spec = json.loads(docker(lab, "service", "inspect", "st_web"))[0]
        tasks = docker(lab, "stack", "ps", "st", "--filter", "desired-state=running",
                       "--format", "{{.Name}} {{.CurrentState}}")
        return ("COLOR=green" in spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
                and (spec.get("UpdateStatus") or {}).get("State") == "completed"
                and tasks.count("Running") == 5)
    eventually(updated, what="the stack update to complete")

    out = docker(lab, "stack", "rm", "st")
    assert "Removing network st_default" in out and "Removing secret st_token" in out, out
    eventually(lambda: "st_" not in docker(lab, "service", "ls") and "st_default" not in docker(lab, "network", "ls"),
               what="the stack to be gone")
