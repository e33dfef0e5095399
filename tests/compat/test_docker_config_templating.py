"""Templated configs and secrets end to end with the real docker CLI on a lab (1 manager + 1
worker): `docker config create --template-driver golang` and `docker secret create
--template-driver golang`, a service using both, and the files its task reads: rendered on the
worker for that task (service, task, node, the task's env, a secret by its target); a config
whose template is bad fails its task with the template's error."""

from __future__ import annotations

import json
import subprocess

from cli.lab import Lab
from tests.swarm.helpers import eventually


def docker(lab: Lab, *args: str, stdin: str | None = None, node: str = "manager-1") -> str:
    proc = subprocess.run(lab.exec_argv(node, ["docker", *args]), input=stdin, capture_output=True, text=True,
                          timeout=45)
    assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_templated_config_and_secret_rendered_per_task(docker_lab: Lab) -> None:
    lab = docker_lab
    docker(lab, "secret", "create", "pw", "-", stdin="hunter2")
    docker(lab, "secret", "create", "--template-driver", "golang", "token", "-", stdin="tok-{{.Task.Slot}}")
    docker(lab, "config", "create", "--template-driver", "golang", "app", "-",
           stdin='{{.Service.Name}} {{.Task.Name}} {{.Node.Hostname}} {{env "MODE"}} {{secret "pw"}}\n')
    docker(lab, "service", "create", "--detach", "--name", "tpl", "--constraint", "node.role==worker",
           "--env", "MODE=prod", "--secret", "pw", "--secret", "token", "--config", "source=app,target=/app.conf",
           "busybox:latest", "sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait")

    def container() -> str:
        return docker(lab, "ps", "-q", "--filter", "name=tpl.1.", node="worker-1").strip()

    cid = eventually(container, timeout=60, what="the tpl task running on worker-1")
    task = json.loads(docker(lab, "inspect", "--type", "container", cid, node="worker-1"))[0]
    name = task["Name"].lstrip("/")
    assert docker(lab, "exec", cid, "cat", "/app.conf", node="worker-1") == f"tpl {name} worker-1 prod hunter2\n"
    assert docker(lab, "exec", cid, "cat", "/run/secrets/token", node="worker-1") == "tok-1"

    docker(lab, "config", "create", "--template-driver", "golang", "bad", "-", stdin="{{.Service.Nope}}")
    docker(lab, "service", "create", "--detach", "--name", "badtpl", "--constraint", "node.role==worker",
           "--config", "bad", "busybox:latest", "sleep", "100000")

    def failure() -> str:
        out = docker(lab, "service", "ps", "--no-trunc", "--format", "{{.Error}}", "badtpl")
        return next((line for line in out.splitlines() if line.strip()), "")

    error = eventually(failure, timeout=60, what="the badtpl task to fail")
    assert "config bad: template: expansion:1:" in error and "can't evaluate field Nope" in error, error
