"""The real docker CLI on each node of a lab (1 manager + 1 worker) against the node-local
container API: `docker ps` lists that node's task containers with their swarm labels, `docker
exec` runs `echo` and an interactive `sh -it` (through a pty), `docker logs`, `top`, `stats
--no-stream`, `inspect`; `docker rm -f` of a task container fails its task and the orchestrator
replaces it; bad references and parameters get dockerd's 400/404 texts."""

from __future__ import annotations

import asyncio
import json

from cli.lab import Lab
from tests.support.pty_session import PtySession
from tests.swarm.helpers import eventually


def docker(lab: Lab, node: str, *args: str, ok: bool = True, timeout: float = 45) -> str:
    proc = lab.exec(node, ["docker", *args], timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{node}: docker {' '.join(args)}: {proc.stderr}\n{proc.stdout}"
        return proc.stdout
    assert proc.returncode != 0, f"{node}: docker {' '.join(args)} succeeded: {proc.stdout}"
    return proc.stderr


def task_rows(lab: Lab, node: str) -> list[dict[str, str]]:
    out = docker(lab, node, "ps", "--no-trunc", "--format", "{{json .}}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def interactive_sh(lab: Lab, node: str, container: str) -> tuple[int, bytes]:
    async with PtySession(lab.exec_argv(node, ["docker", "exec", "-it", container, "sh"]), timeout=30) as sh:
        await sh.send(b"echo in-$((40+2)) $(hostname)\r")
        await sh.expect(b"in-42")
        await sh.send(b"exit 5\r")
        return await sh.wait(), sh.output


def test_docker_ps_exec_logs_top_stats_inspect_and_rm_on_every_node(docker_lab: Lab) -> None:
    lab = docker_lab
    docker(lab, "manager-1", "service", "create", "--detach", "--name", "web", "--replicas", "2",
           "--constraint", "node.role==worker", "busybox:latest", "sh", "-c",
           "trap 'exit 0' TERM; echo web-up; sleep 100000 & wait")
    rows = eventually(lambda: len(task_rows(lab, "worker-1")) == 2 and task_rows(lab, "worker-1"),
                      timeout=60, what="both web tasks running on worker-1")
    assert isinstance(rows, list)
    assert task_rows(lab, "manager-1") == []          # the manager runs none: its ps is its own
    service_id = json.loads(docker(lab, "manager-1", "service", "inspect", "web"))[0]["ID"]
    tasks = {t["ID"]: t for t in json.loads(docker(lab, "manager-1", "inspect", "--type", "task",
                                                   *[r["ID"] for r in rows]))}
    for row in rows:
        task = tasks[row["ID"]]
        assert row["Names"] == f"web.{task['Slot']}.{task['ID']}" and row["Image"] == "busybox:latest"
        labels = dict(kv.split("=", 1) for kv in row["Labels"].split(","))
        assert labels["com.docker.swarm.service.name"] == "web"
        assert labels["com.docker.swarm.service.id"] == service_id
        assert labels["com.docker.swarm.task.id"] == task["ID"]
        assert labels["com.docker.swarm.task.name"] == row["Names"]
        assert labels["com.docker.swarm.node.id"] == task["NodeID"] and "com.docker.swarm.task" in labels
    name = rows[0]["Names"]
    filtered = docker(lab, "worker-1", "ps", "-q", "--filter", f"name={name}",
                      "--filter", "label=com.docker.swarm.service.name=web")
    assert filtered.split() == [rows[0]["ID"][:12]]

    assert docker(lab, "worker-1", "exec", name, "echo", "hello from", "exec") == "hello from exec\n"
    code, screen = asyncio.run(interactive_sh(lab, "worker-1", name))
    assert code == 5, screen
    eventually(lambda: "web-up" in docker(lab, "worker-1", "logs", name), what="the task's log line")
    top = docker(lab, "worker-1", "top", name)
    assert top.splitlines()[0].split()[:2] == ["UID", "PID"] and "sleep 100000" in top
    stats = docker(lab, "worker-1", "stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", name)
    assert stats.split()[0] == name and int(stats.split()[1]) >= 2
    every = docker(lab, "worker-1", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}")
    assert sorted(line.split()[0] for line in every.splitlines()) == sorted(r["Names"] for r in rows)
    inspected = json.loads(docker(lab, "worker-1", "inspect", name))[0]
    assert inspected["State"]["Running"] and inspected["Name"] == "/" + name
    assert inspected["Config"]["Labels"]["com.docker.swarm.task.id"] == rows[0]["ID"]

    assert "No such container: nosuch" in docker(lab, "worker-1", "exec", "nosuch", "true", ok=False)
    assert "Invalid signal: BOGUS" in docker(lab, "worker-1", "kill", "--signal", "BOGUS", name, ok=False)
    assert "container is running" in docker(lab, "worker-1", "rm", name, ok=False)

    assert docker(lab, "worker-1", "rm", "-f", name).strip() == name
    assert rows[0]["ID"] not in docker(lab, "worker-1", "ps", "-aq", "--no-trunc")

    def replaced() -> bool:
        listed = json.loads(docker(lab, "manager-1", "inspect", "--type", "task", rows[0]["ID"]))[0]
        running = [line for line in docker(lab, "manager-1", "service", "ps", "--format",
                                           "{{.CurrentState}}", "web").splitlines() if line.startswith("Running")]
        return listed["Status"]["State"] == "failed" and len(running) == 2

    eventually(replaced, timeout=60, what="the removed task failed and replaced")
    failed = json.loads(docker(lab, "manager-1", "inspect", "--type", "task", rows[0]["ID"]))[0]["Status"]
    assert failed["Err"] == "task: non-zero exit (137)", failed      # killed, as dockerd reports it
    docker(lab, "manager-1", "service", "rm", "web")
