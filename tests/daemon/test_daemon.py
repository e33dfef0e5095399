"""`shoal daemon` as a real process: API, lock, shutdown, CLI, docker CLI, TLS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cli.client import ApiResponseError, ClientError, DaemonClient
from tests.support.daemon import daemon_argv, running_daemon
from tests.support.tls import TestCA
from tests.support.wait import async_wait_until, free_port


def shoal_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


async def test_daemon_answers_ping_version_info(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--hostname", "alpha") as d:
        async with DaemonClient(d.host) as c:
            assert await c.get("/_ping") == "OK"
            assert (await c.get("/v1.41/version"))["ApiVersion"] == "1.47"
            info = await c.get("/info")
            assert info["Name"] == "alpha"
            assert info["Swarm"]["LocalNodeState"] == "inactive"
        # structured logs: one JSON object per line on stderr
        first = json.loads(d.log_text().splitlines()[0])
        assert first["msg"] == "daemon ready" and first["level"] == "info"


def test_sigterm_stops_cleanly_within_bound(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--shutdown-timeout", "5") as d:
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=7) == 0
        assert time.monotonic() - started < 6
        assert not d.socket.exists(), "socket left behind"
        assert "daemon stopped" in d.log_text()


def test_second_daemon_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        second = subprocess.run(daemon_argv(d.data_dir, tmp_path / "other.sock"),
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert f"is already using data dir {d.data_dir}" in second.stderr
        assert f"pid {d.proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert d.proc.poll() is None, "the first daemon must keep running"


def test_cli_version_and_info(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--hostname", "beta") as d:
        out = shoal_cli("-H", d.host, "version")
        assert out.returncode == 0, out.stderr
        assert "ApiVersion:   1.47" in out.stdout
        out = shoal_cli("info", env={"SHOAL_HOST": d.host})
        assert out.returncode == 0, out.stderr
        assert "Name: beta" in out.stdout and "Swarm: inactive" in out.stdout


def test_cli_reports_a_down_daemon_in_one_line(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/absent.sock"
    out = shoal_cli("-H", host, "version")
    assert out.returncode == 1
    assert out.stderr.strip() == f"cannot connect to the shoal daemon at {host} — is it running?"
    assert "Traceback" not in out.stderr


def test_docker_cli_version_against_the_socket(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.fail("the docker CLI is not installed (deploy/install.sh installs it)")
    with running_daemon(tmp_path) as d:
        out = subprocess.run([docker, "version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DOCKER_HOST": d.host})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "0.1.0 1.47"
        out = subprocess.run([docker, "version"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DOCKER_HOST": d.host})
        assert out.returncode == 0 and "Server: shoal" in out.stdout, out.stderr


def test_docker_py_version(tmp_path: Path) -> None:
    import docker

    with running_daemon(tmp_path) as d:
        client = docker.DockerClient(base_url=d.host, version="auto")
        try:
            assert client.version()["ApiVersion"] == "1.47"
            assert client.ping() is True
        finally:
            client.close()


async def test_tcp_api_with_mutual_tls(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    server, client_cert = ca.issue("daemon"), ca.issue("client")
    port = free_port()
    with running_daemon(tmp_path, "--tcp", f"127.0.0.1:{port}", "--tls-cert", str(server.cert),
                        "--tls-key", str(server.key), "--tls-ca", str(ca.files.cert)):
        ctx = ssl.create_default_context(cafile=str(ca.files.cert))
        ctx.load_cert_chain(str(client_cert.cert), str(client_cert.key))
        async with DaemonClient(f"tcp://127.0.0.1:{port}", ssl_context=ctx) as c:
            assert (await c.get("/version"))["ApiVersion"] == "1.47"
        # Without a client certificate the handshake is refused.
        bare = ssl.create_default_context(cafile=str(ca.files.cert))
        with pytest.raises(ClientError):
            async with DaemonClient(f"tcp://127.0.0.1:{port}", ssl_context=bare) as c:
                await c.get("/version")


def test_second_signal_forces_exit(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        os.kill(d.proc.pid, signal.SIGTERM)
        os.kill(d.proc.pid, signal.SIGINT)  # arrives while the ordered shutdown is under way
        assert d.proc.wait(timeout=10) == 130
        assert "second signal: forcing exit" in d.log_text()


async def test_swarm_init_on_a_port_in_use_is_an_error_and_the_daemon_lives(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with running_daemon(tmp_path) as d:
            async with DaemonClient(d.host) as c:
                with pytest.raises(ApiResponseError) as err:
                    await c.post("/swarm/init", {"ListenAddr": f"127.0.0.1:{port}",
                                                 "AdvertiseAddr": f"127.0.0.1:{port}"})
                assert err.value.status == 400
                assert f"listen tcp 127.0.0.1:{port}: bind: " in str(err.value)
                assert "address already in use" in str(err.value).lower()
                assert (await c.get("/info"))["Swarm"]["LocalNodeState"] == "inactive", "nothing half-made"
                free = free_port()
                node_id = await c.post("/swarm/init", {"ListenAddr": f"127.0.0.1:{free}",
                                                       "AdvertiseAddr": f"127.0.0.1:{free}"})
                assert (await c.get("/info"))["Swarm"]["NodeID"] == node_id
                await c.post("/swarm/leave", force="1")
            assert d.proc.poll() is None, "the daemon must keep running"
            assert "ExceptionGroup" not in d.log_text()
    finally:
        taken.close()


async def test_swarm_init_address_pools_data_path_port_and_the_ingress_network(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        async with DaemonClient(d.host) as c:
            port = free_port()
            addr = {"ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": f"127.0.0.1:{port}"}
            refused: list[tuple[dict[str, Any], str]] = [
                ({"SubnetSize": 30}, "subnet size is out of range: 30"),
                ({"DefaultAddrPool": ["10.20.0.0/24"], "SubnetSize": 16},
                 'invalid CIDR: "10.20.0.0/24". Subnet size is too small for pool: 16'),
                ({"DataPathPort": 80}, "Datapath port number is not in valid range (1024-49151) : 80"),
            ]
            for bad, message in refused:
                with pytest.raises(ApiResponseError) as err:
                    await c.post("/swarm/init", {**addr, **bad})
                assert (err.value.status, err.value.message) == (400, message)
            assert (await c.get("/info"))["Swarm"]["LocalNodeState"] == "inactive"
            await c.post("/swarm/init", {**addr, "DefaultAddrPool": ["10.20.0.0/16", "10.30.0.0/16"],
                                         "SubnetSize": 26, "DataPathPort": 4242})
            cluster = (await c.get("/info"))["Swarm"]["Cluster"]
            assert (cluster["DefaultAddrPool"], cluster["SubnetSize"], cluster["DataPathPort"]) == (
                ["10.20.0.0/16", "10.30.0.0/16"], 26, 4242)

            async def ingress() -> dict:
                return next(n for n in await c.get("/networks") if n["Name"] == "ingress")

            async def allocated() -> bool:
                return bool((await ingress())["IPAM"]["Config"])

            await async_wait_until(allocated, what="the allocator to give ingress its subnet")
            net = await ingress()
            assert net["Ingress"] is True and net["Scope"] == "swarm" and net["Driver"] == "overlay"
            assert net["IPAM"]["Config"] == [{"Subnet": "10.20.0.0/26", "Gateway": "10.20.0.1"}]
            assert net["Options"]["com.docker.network.driver.overlay.vxlanid_list"] == "4096"
            await c.post("/swarm/leave", force="1")
