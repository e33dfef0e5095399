"""docker-py (7.x) runs standalone containers on the node-local API as it does against dockerd:
`containers.run` (foreground with its output, detached, with auto_remove, environment, working
dir, user, volumes, labels), `attach_socket`-free `logs`, `wait`, `restart`, `rename`, `prune`,
and its NotFound / APIError (409) exceptions. Served in the test's loop; docker-py runs in a
thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import docker
import pytest
from docker.errors import APIError, ContainerError, ImageNotFound, NotFound

from tests.executor.conftest import needs_root_and_runc
from tests.executor.test_container_api import Docker
from tests.executor.test_docker_run import docker as docker_cli  # noqa: F401 - the served API fixture
from tests.swarm.helpers import eventually

pytestmark = needs_root_and_runc()


async def test_docker_py_runs_standalone_containers(docker_cli: Docker, tmp_path: Path) -> None:  # noqa: F811
    host = docker_cli.env["DOCKER_HOST"]
    shared = tmp_path / "shared"
    shared.mkdir()

    def drive() -> None:
        client = docker.DockerClient(base_url=host, version="1.47")
        try:
            out = client.containers.run("busybox", ["sh", "-c", "echo $A $PWD $(id -u); ls /data"],
                                        environment={"A": "a1"}, working_dir="/tmp", user="1000",
                                        volumes={str(shared): {"bind": "/data", "mode": "rw"}}, remove=True)
            assert out == b"a1 /tmp 1000\n"
            with pytest.raises(ContainerError) as failed:
                client.containers.run("busybox", ["sh", "-c", "echo boom >&2; exit 2"], remove=True)
            assert failed.value.exit_status == 2 and b"boom" in failed.value.stderr
            c = client.containers.run("busybox", ["sh", "-c", "trap 'exit 0' TERM; echo ready; sleep 1000 & wait"],
                                      detach=True, name="pyrun", labels={"suite": "py"})
            assert c.name == "pyrun" and c.status in ("created", "running")
            c.reload()
            assert c.status == "running" and c.attrs["Config"]["Image"] == "busybox"
            assert c.labels == {"org.test.image": "busybox", "suite": "py"}
            assert client.containers.get("pyrun").id == c.id
            assert [x.id for x in client.containers.list(filters={"label": "suite=py"})] == [c.id]
            c.rename("pyrun2")
            c.reload()
            assert c.name == "pyrun2"
            c.restart(timeout=5)
            # SIGTERM before the restarted shell set its trap would be lost on PID 1 (137 after the
            # grace): stop only once it said it is ready again.
            eventually(lambda: c.logs() == b"ready\nready\n", what="the restarted shell's second 'ready'")
            c.stop(timeout=5)
            assert c.wait()["StatusCode"] == 0
            assert c.logs() == b"ready\nready\n"
            assert c.attach(stdout=True, stderr=True, logs=True) == b"ready\nready\n"   # logs=1, stream=0
            report = client.containers.prune()
            assert report["ContainersDeleted"] == [c.id]
            with pytest.raises(NotFound):
                client.containers.get("pyrun2")
            with pytest.raises(ImageNotFound):
                client.containers.create("nosuch:9")
            client.containers.create("busybox", "true", name="twice")
            with pytest.raises(APIError) as conflict:
                client.containers.create("busybox", "true", name="twice")
            assert conflict.value.status_code == 409
            # a wait sent after `run` returns may come after the removal (dockerd answers 404 then too);
            # waiting for a removal is `docker run --rm`'s, tested with the CLI (test_docker_run.py)
            auto = client.containers.run("busybox", "true", detach=True, auto_remove=True)
            eventually(lambda: auto.id not in [x.id for x in client.containers.list(all=True)],
                       what="the auto_remove container removed once it exited")
            with pytest.raises(NotFound):
                auto.reload()
            client.containers.get("twice").remove()
            assert client.containers.list(all=True) == []
        finally:
            client.close()

    await asyncio.to_thread(drive)
