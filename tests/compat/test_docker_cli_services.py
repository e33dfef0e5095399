"""The real docker CLI (28.2.2) against the service, secret and network API on a unix socket.

The app is served in the test's own event loop, so the CLI runs as an asyncio subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from manager.store import Store
from tests.api.support import StoreCluster, add_node, build_app, new_store, reconciling, serve_unix

DOCKER = "/usr/local/bin/docker"


@pytest.fixture
def docker_bin() -> str:
    path = DOCKER if os.path.exists(DOCKER) else shutil.which("docker")
    if path is None:
        pytest.fail("the docker CLI is not installed (deploy/install.sh installs it)")
    return path


class Docker:
    def __init__(self, binary: str, host: str, home: Path) -> None:
        self.binary = binary
        self.env = {**os.environ, "DOCKER_HOST": host, "DOCKER_CONFIG": str(home)}

    async def run(self, *args: str, ok: bool = True) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(self.binary, *args, env=self.env,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        code = proc.returncode if proc.returncode is not None else -1
        if ok:
            assert code == 0, f"docker {' '.join(args)} failed ({code}): {err.decode()}"
        return code, out.decode(), err.decode()


async def test_docker_cli_service_secret_network_flow(tmp_path: Path, docker_bin: str) -> None:
    store: Store = new_store()
    await add_node(store)
    async with serve_unix(build_app(StoreCluster(store), tmp_path), tmp_path / "api.sock") as host:
        docker = Docker(docker_bin, host, tmp_path / "dockercfg")

        _, out, _ = await docker.run("network", "create", "-d", "overlay", "n1")
        net_id = out.strip()
        assert len(net_id) == 25
        _, out, _ = await docker.run("network", "ls")
        assert "n1" in out and "overlay" in out and "swarm" in out

        _, out, _ = await docker.run("service", "create", "--detach", "--no-resolve-image", "--name", "web",
                                     "--replicas", "2", "--network", "n1", "busybox", "sleep", "1000")
        service_id = out.strip().splitlines()[-1]
        _, out, _ = await docker.run("service", "ls")
        line = next(row for row in out.splitlines() if "web" in row)
        assert "replicated" in line and "0/2" in line and "busybox:latest" in line
        _, out, _ = await docker.run("service", "inspect", "web")
        spec = json.loads(out)[0]["Spec"]
        assert spec["Mode"]["Replicated"]["Replicas"] == 2
        assert spec["TaskTemplate"]["ContainerSpec"]["Args"] == ["sleep", "1000"]
        assert spec["TaskTemplate"]["Networks"][0]["Target"] == net_id
        _, out, _ = await docker.run("service", "inspect", "--pretty", "web")
        assert "Replicas:\t2" in out or "Replicas:" in out

        await docker.run("service", "update", "--detach", "--env-add", "A=1", "web")
        _, out, _ = await docker.run("service", "inspect", "--format", "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
                                     "web")
        assert json.loads(out) == ["A=1"]
        _, out, _ = await docker.run("service", "scale", "--detach", "web=3")
        assert "web scaled to 3" in out
        _, out, _ = await docker.run("service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas}}", "web")
        assert out.strip() == "3"
        await docker.run("service", "rollback", "--detach", "web")
        _, out, _ = await docker.run("service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas}} "
                                     "{{.UpdateStatus.State}}", "web")
        assert out.split() == ["2", "rollback_started"]
        _, out, _ = await docker.run("service", "ps", "web")
        assert out.splitlines()[0].split()[:2] == ["ID", "NAME"]

        code, _, err = await docker.run("service", "create", "--detach", "--no-resolve-image", "--name", "web",
                                        "busybox", ok=False)
        assert code == 1 and "already exists" in err

        code, _, err = await docker.run("network", "rm", "n1", ok=False)
        assert code == 1 and "is in use by service" in err
        _, out, _ = await docker.run("service", "rm", "web")
        assert out.strip() == "web"
        _, out, _ = await docker.run("service", "ls", "-q")
        assert out.strip() == ""
        assert service_id
        await docker.run("network", "rm", "n1")

        secret_file = tmp_path / "pw.txt"
        secret_file.write_text("hunter2")
        _, out, _ = await docker.run("secret", "create", "pw", str(secret_file))
        secret_id = out.strip()
        _, out, _ = await docker.run("secret", "ls")
        assert "pw" in out and secret_id[:10] in out
        _, out, _ = await docker.run("secret", "inspect", "pw")
        assert "hunter2" not in out and json.loads(out)[0]["Spec"]["Name"] == "pw"
        _, out, _ = await docker.run("secret", "rm", "pw")
        assert out.strip() == "pw"


async def test_docker_cli_waits_for_convergence_and_lists_tasks(tmp_path: Path, docker_bin: str) -> None:
    store: Store = new_store()
    await add_node(store, hostname="node-a")
    async with serve_unix(build_app(StoreCluster(store), tmp_path), tmp_path / "api.sock") as host, \
            reconciling(store):
        docker = Docker(docker_bin, host, tmp_path / "dockercfg")
        _, out, err = await docker.run("service", "create", "--no-resolve-image", "--name", "web", "--replicas", "2",
                                       "--update-monitor", "1s", "busybox", "sleep", "1000")
        assert "overall progress: 2 out of 2 tasks" in out + err
        assert "verify: Service " in out and " converged" in out
        _, out, err = await docker.run("service", "scale", "web=3")
        assert "web scaled to 3" in out and "3 out of 3 tasks" in out + err
        _, out, _ = await docker.run("service", "ps", "--format", "{{.Name}} {{.Node}} {{.DesiredState}}", "web")
        assert sorted(out.split("\n")[:3]) == ["web.1 node-a Running", "web.2 node-a Running",
                                               "web.3 node-a Running"]
        _, out, _ = await docker.run("service", "ls", "--format", "{{.Name}} {{.Replicas}}")
        assert out.strip() == "web 3/3"
