"""`shoal service/secret/config/network` commands as subprocesses against the served API.

A FakeReconciler stands in for the orchestrator and the agent, so create/scale converge and
the progress display can finish.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from manager.allocator import ingress_network
from manager.store import Store
from tests.api.support import (
    StoreCluster,
    add_node,
    allocating,
    build_app,
    new_store,
    reconciling,
    serve_unix,
)


class Shoal:
    def __init__(self, host: str) -> None:
        self.host = host

    async def run(self, *args: str, ok: bool = True, stdin: bytes | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.api.cli_entry", "-H", self.host, *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
        code = proc.returncode if proc.returncode is not None else -1
        if ok:
            assert code == 0, f"shoal {' '.join(args)} failed ({code}): {err.decode()}"
        return code, out.decode(), err.decode()


async def test_service_lifecycle_through_the_cli(tmp_path: Path) -> None:
    store: Store = new_store()
    await add_node(store, hostname="node-a")
    await store.update(lambda tx: tx.create(ingress_network()))     # as `swarm init` makes it
    async with serve_unix(build_app(StoreCluster(store, allocator=True), tmp_path), tmp_path / "api.sock") as host, \
            reconciling(store), allocating(store):
        shoal = Shoal(host)
        _, out, _ = await shoal.run("service", "create", "--name", "web", "--replicas", "2", "--env", "A=1",
                                    "--limit-memory", "64M", "--limit-cpu", "0.5", "--restart-delay", "1m30s",
                                    "--update-monitor", "500ms", "--publish", "8080:80", "--timeout", "20",
                                    "busybox", "sleep", "1000")
        assert "overall progress: 2 out of 2 tasks" in out
        assert "verify: Service web converged" in out
        _, inspected, _ = await shoal.run("service", "inspect", "web")
        spec = json.loads(inspected)[0]["Spec"]
        assert spec["TaskTemplate"]["Resources"]["Limits"] == {"MemoryBytes": 64 * 1024**2, "NanoCPUs": 500_000_000}
        assert spec["TaskTemplate"]["RestartPolicy"]["Delay"] == 90_000_000_000
        assert spec["TaskTemplate"]["ContainerSpec"]["Image"] == "busybox:latest"
        assert spec["UpdateConfig"]["Monitor"] == 500_000_000

        # create answered once the allocator had written the published port, so `ls` shows it
        assert store.view(lambda tx: tx.find("services", name="web"))[0].endpoint.get("Ports")
        _, out, _ = await shoal.run("service", "ls")
        header, row = out.splitlines()
        assert header.split() == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
        assert row.split()[1:] == ["web", "replicated", "2/2", "busybox:latest", "*:8080->80/tcp"]

        _, out, _ = await shoal.run("service", "scale", "web=3", "--timeout", "20")
        assert "web scaled to 3" in out and "overall progress: 3 out of 3 tasks" in out
        await shoal.run("service", "update", "--env-add", "B=2", "--detach", "web")
        _, out, _ = await shoal.run("service", "ps", "web")
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["ID", "NAME", "IMAGE"]
        rows = [re.split(r"\s{3,}", line.strip()) for line in lines[1:]]
        running = [r for r in rows if r[4] == "Running" and r[5].startswith("Running ") and r[5].endswith(" ago")]
        assert len(running) == 3
        assert {r[1] for r in running} == {"web.1", "web.2", "web.3"}
        assert sum(r[4] == "Shutdown" for r in rows) == 3
        assert any("\\_ web.1" in line for line in lines)
        assert all("node-a" in line for line in lines[1:])

        code, _, err = await shoal.run("service", "create", "--name", "bad", "--restart-delay", "5 parsecs",
                                       "busybox", ok=False)
        assert code == 1 and "--restart-delay" in err and "Traceback" not in err
        code, _, err = await shoal.run("service", "create", "--detach", "--name", "web", "busybox", ok=False)
        assert code == 1 and err.strip().endswith("service web already exists")
        code, _, err = await shoal.run("service", "scale", "web=x", ok=False)
        assert code == 1 and "invalid scale specifier" in err

        await shoal.run("secret", "create", "pw", "-", stdin=b"hunter2")
        await shoal.run("service", "update", "--detach", "--secret-add", "source=pw,target=db_pw", "web")
        _, inspected, _ = await shoal.run("service", "inspect", "web")
        refs = json.loads(inspected)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
        assert [(r["SecretName"], r["File"]["Name"]) for r in refs] == [("pw", "db_pw")]
        code, _, err = await shoal.run("secret", "rm", "pw", ok=False)
        assert code == 1 and "is in use by the following service: web" in err
        await shoal.run("service", "update", "--detach", "--secret-rm", "pw", "web")
        _, inspected, _ = await shoal.run("service", "inspect", "web")
        assert "Secrets" not in json.loads(inspected)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]

        _, out, _ = await shoal.run("service", "rollback", "--detach", "web")
        assert out.strip() == "web"
        _, out, _ = await shoal.run("service", "rm", "web")
        assert out.strip() == "web"
        code, _, err = await shoal.run("service", "rm", "web", ok=False)
        assert code == 1 and "service web not found" in err


async def test_secret_config_network_commands(tmp_path: Path) -> None:
    store = new_store()
    async with serve_unix(build_app(StoreCluster(store), tmp_path), tmp_path / "api.sock") as host:
        shoal = Shoal(host)
        _, out, _ = await shoal.run("secret", "create", "pw", "-", stdin=b"hunter2")
        secret_id = out.strip()
        _, out, _ = await shoal.run("secret", "ls")
        assert "pw" in out and secret_id in out
        _, out, _ = await shoal.run("secret", "inspect", "pw")
        assert "hunter2" not in out and json.loads(out)[0]["ID"] == secret_id
        await shoal.run("secret", "rm", "pw")

        (tmp_path / "app.conf").write_text("port=80\n")
        await shoal.run("config", "create", "--label", "a=b", "app", str(tmp_path / "app.conf"))
        _, out, _ = await shoal.run("config", "inspect", "app")
        assert json.loads(out)[0]["Spec"]["Labels"] == {"a": "b"}
        code, _, err = await shoal.run("config", "create", "x", str(tmp_path / "missing"), ok=False)
        assert code == 1 and "cannot read" in err

        _, out, _ = await shoal.run("network", "create", "--subnet", "10.20.0.0/24", "--attachable", "n1")
        net_id = out.strip()
        _, out, _ = await shoal.run("network", "ls")
        assert out.splitlines()[1].split() == [net_id[:12], "n1", "overlay", "swarm"]
        code, _, err = await shoal.run("network", "create", "n1", ok=False)
        assert code == 1 and "network with name n1 already exists" in err
        await shoal.run("network", "rm", "n1")


async def test_publish_flags_endpoint_mode_and_the_ports_column(tmp_path: Path) -> None:
    store = new_store()
    await store.update(lambda tx: tx.create(ingress_network()))
    async with serve_unix(build_app(StoreCluster(store, allocator=True), tmp_path), tmp_path / "api.sock") as host, \
            allocating(store):
        shoal = Shoal(host)

        def ports() -> list[int]:
            """The service's published ports as the store holds them now: create and update answer
            once the allocator wrote them, so no wait."""
            service = store.view(lambda tx: tx.find("services", name="web"))[0]
            return [p.get("PublishedPort", 0) for p in service.endpoint.get("Ports") or []]

        async def spec() -> dict[str, Any]:
            _, inspected, _ = await shoal.run("service", "inspect", "web")
            return dict(json.loads(inspected)[0]["Spec"])

        await shoal.run("service", "create", "--detach", "--name", "web", "-p", "8080:80", "-p", "443",
                        "--publish", "published=5353,target=53,protocol=udp", "busybox")
        assert 30000 in ports()
        _, out, _ = await shoal.run("service", "ls")
        assert out.splitlines()[1].split(None, 5)[5] == "*:8080->80/tcp, *:30000->443/tcp, *:5353->53/udp"

        await shoal.run("service", "update", "--detach", "--publish-rm", "80", "--publish-rm", "53/udp",
                        "--publish-add", "mode=host,target=81,published=8081", "web")
        assert (await spec())["EndpointSpec"] == {"Mode": "vip", "Ports": [
            {"Protocol": "tcp", "TargetPort": 443, "PublishMode": "ingress"},
            {"Protocol": "tcp", "TargetPort": 81, "PublishedPort": 8081, "PublishMode": "host"}]}
        assert ports() == [30000, 8081]                  # sorted by key, the auto port kept
        _, out, _ = await shoal.run("service", "ls")
        assert out.splitlines()[1].split(None, 5)[5] == "*:30000->443/tcp"       # host mode is not shown

        code, _, err = await shoal.run("service", "update", "--detach", "--endpoint-mode", "dnsrr", "web", ok=False)
        assert code == 1 and "Traceback" not in err
        assert err.strip() == ("Error response from daemon: rpc error: code = InvalidArgument desc = EndpointSpec: "
                               "port published with ingress mode can't be used with dnsrr mode")
        await shoal.run("service", "update", "--detach", "--publish-rm", "443", "--endpoint-mode", "DNSRR", "web")
        assert (await spec())["EndpointSpec"]["Mode"] == "dnsrr"
        code, _, err = await shoal.run("service", "update", "--publish-add", "80:http", "web", ok=False)
        assert code == 1 and err.strip() == \
            'invalid argument "80:http" for "--publish-add" flag: invalid containerPort: http'
        code, _, err = await shoal.run("service", "create", "--name", "x", "-p", "8081:80", "busybox", ok=False)
        assert code == 1 and "Traceback" not in err and \
            "port '8081' is already in use by service 'web'" in err and "as a host-published port" in err
