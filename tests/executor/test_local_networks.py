"""Local (bridge) networks with the real docker CLI against the node-local API served in the
test's loop: create with IPAM config, labels and internal; ls and inspect as dockerd shows them;
`docker run --network` with aliases and a fixed address, containers reaching each other over the
bridge; connect and disconnect of a running container; rm refused while endpoints remain; prune.
The bridges and veths are made in a namespace the test creates (every data-path call enters it),
so nothing touches the host's own network. The embedded DNS of user-defined networks (names,
aliases, short IDs, legacy links) is served in the containers' namespaces at 127.0.0.11."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from engineapi.events import EventBus
from engineapi.http import ApiError, Routes, json_response, new_app
from node.localdns import LocalDns
from overlay import local_bridge, netns
from tests.api.support import serve_unix
from tests.executor.conftest import needs_root_and_runc
from tests.executor.test_container_api import Docker
from tests.executor.test_docker_run import BusyboxImages
from worker.executor import Executor, rootfs
from worker.executor.node_api import add_node_container_routes
from worker.localnet import api as localnet_api
from worker.localnet.endpoints import endpoint_extras
from worker.localnet.networks import LocalNetworks
from worker.standalone import api as standalone_api
from worker.standalone.containers import StandaloneContainers

pytestmark = needs_root_and_runc()


class InNamespace:
    """overlay.local_bridge with every call made inside the namespace at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __getattr__(self, name: str) -> Any:
        function = getattr(local_bridge, name)
        if name in ("bridge_name", "host_veth_name"):
            return function

        def call(*args: Any) -> Any:
            with netns.entered(self.path):
                return function(*args)
        return call


@pytest.fixture
def host_ns(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "ns"
    netns.prepare_dir(directory)
    path = directory / "host"
    netns.create(path)
    try:
        yield path
    finally:
        netns.remove(path)
        rootfs.unmount(directory)


class LocalDocker(Docker):
    def __init__(self, host: str, home: Path, networks: LocalNetworks) -> None:
        super().__init__(host, home)
        self.networks = networks


NETWORK_EVENTS: list[tuple[str, str, str]] = []     # (action, network name, container)


@pytest.fixture
async def docker(executor: Executor, busybox_layer: Path, tmp_path: Path,
                 host_ns: Path) -> AsyncIterator[LocalDocker]:
    app = new_app()
    routes = Routes(app)
    containers = add_node_container_routes(app, routes, executor, lambda ref: "sha256:" + "cd" * 32, EventBus())
    networks = LocalNetworks(tmp_path / "localnets", executor.layout.run_dir / "standalone-netns",
                             InNamespace(host_ns),
                             lambda action, _, attrs: NETWORK_EVENTS.append(
                                 (action, attrs["name"], attrs.get("container", ""))))
    host_resolv = tmp_path / "host-resolv.conf"      # no nameserver: a name not ours fails at once (SERVFAIL)
    host_resolv.write_text("options timeout:1\n")
    networks.dns = LocalDns(networks.namespace, str(host_resolv))
    standalone = StandaloneContainers(containers, BusyboxImages(busybox_layer), networks)
    standalone_api.add_routes(app, routes, standalone)
    localnet_api.add_routes(app, routes, networks, standalone)

    async def no_swarm(request: Any) -> Any:       # the swarm's routes on a node outside a swarm
        if request.method == "GET" and request.path.endswith("/networks"):
            raise ApiError(503, "This node is not a swarm manager.")
        raise ApiError(404, f"network {request.match_info.get('ref', '')} not found")

    for method, path in (("GET", "/networks"), ("GET", "/networks/{ref}"), ("DELETE", "/networks/{ref}"),
                         ("POST", "/networks/create")):
        routes.add(method, path, no_swarm)

    async def empty_prune(request: Any) -> Any:
        return json_response({"NetworksDeleted": None})

    routes.add("POST", "/networks/prune", empty_prune)
    async with serve_unix(app, tmp_path / "api.sock") as host:
        yield LocalDocker(host, tmp_path / "cfg", networks)


async def test_bridge_networks_with_the_docker_cli(docker: Docker, host_ns: Path) -> None:
    _, out, _ = await docker.run("network", "create", "--subnet", "172.28.0.0/16", "--ip-range", "172.28.5.0/24",
                                 "--gateway", "172.28.5.254", "--label", "tier=back", "back")
    back_id = out.strip()
    await docker.run("network", "create", "--internal", "quiet")
    _, out, _ = await docker.run("network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}")
    assert sorted(out.splitlines()) == ["back bridge local", "bridge bridge local", "host host local",
                                        "none null local", "quiet bridge local"]
    net = json.loads((await docker.run("network", "inspect", "back"))[1])[0]
    assert net["Id"] == back_id and net["Labels"] == {"tier": "back"} and net["Internal"] is False
    assert net["IPAM"] == {"Driver": "default", "Options": None, "Config": [
        {"Subnet": "172.28.0.0/16", "IPRange": "172.28.5.0/24", "Gateway": "172.28.5.254"}]}
    quiet = json.loads((await docker.run("network", "inspect", "quiet"))[1])[0]
    assert quiet["Internal"] is True and quiet["IPAM"]["Config"][0]["Subnet"] == "172.18.0.0/16"
    nft = await asyncio.create_subprocess_exec("nsenter", f"--net={host_ns}", "nft", "list", "tables",
                                               stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        tables = (await nft.communicate())[0].decode().split()
    assert f"shoal-br-{back_id[:12]}" in tables and f"shoal-br-{quiet['Id'][:12]}" not in tables   # internal: no NAT
    code, _, err = await docker.run("network", "create", "back", ok=False)
    assert code == 1 and "network with name back already exists" in err
    code, _, err = await docker.run("network", "create", "--subnet", "172.28.1.0/24", "clash", ok=False)
    assert code == 1 and "Pool overlaps with other one on this address space" in err

    server_id = (await docker.run("run", "-d", "--name", "server", "--network", "back", "--network-alias", "db",
                                  "--ip", "172.28.5.24", "busybox", "sleep", "1000"))[1].strip()
    doc = json.loads((await docker.run("inspect", "server"))[1])[0]
    endpoint = doc["NetworkSettings"]["Networks"]["back"]
    assert (endpoint["IPAddress"], endpoint["Gateway"], endpoint["MacAddress"]) == (
        "172.28.5.24", "172.28.5.254", "02:42:ac:1c:05:18")
    assert endpoint["Aliases"] == ["db"] and endpoint["IPAMConfig"] == {"IPv4Address": "172.28.5.24"}
    _, out, _ = await docker.run("run", "--rm", "--network", "back", "busybox", "sh", "-c",
                                 "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default; "
                                 "ping -c 1 -W 5 172.28.5.24 >/dev/null && echo reached")
    assert out.splitlines() == ["inet 172.28.5.1/16", "default via 172.28.5.254 dev eth0 ", "reached"]
    _, out, _ = await docker.run("run", "--rm", "--network", "back", "--name", "asker", "busybox", "sh", "-c",
                                 "grep -w db /etc/hosts; ping -c 1 -W 5 server >/dev/null && echo by-name")
    assert out.split("\n")[0].split()[::2] == ["172.28.5.24", f"{server_id[:12]}"] and "by-name" in out

    await docker.run("run", "-d", "--name", "loner", "busybox", "sleep", "1000")
    default = json.loads((await docker.run("network", "inspect", "bridge"))[1])[0]     # dockerd's default bridge
    assert default["IPAM"]["Config"] == [{"Subnet": "172.31.0.0/16", "Gateway": "172.31.0.1"}]   # no route here
    assert default["Options"]["com.docker.network.bridge.default_bridge"] == "true"
    assert default["Options"]["com.docker.network.bridge.name"] == "shoal0"
    assert [c["Name"] for c in default["Containers"].values()] == ["loner"]
    _, out, _ = await docker.run("exec", "loner", "sh", "-c", "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; "
                                 "ip route | grep default; grep -c 127.0.0.11 /etc/resolv.conf || true")
    assert out.splitlines() == ["inet 172.31.0.2/16", "default via 172.31.0.1 dev eth0 ", "0"]
    await docker.run("network", "connect", "--alias", "solo", "back", "loner")
    net = json.loads((await docker.run("network", "inspect", "back"))[1])[0]
    assert sorted(c["Name"] for c in net["Containers"].values()) == ["loner", "server"]
    _, out, _ = await docker.run("exec", "loner", "sh", "-c", "ping -c 1 -W 5 172.28.5.24 >/dev/null && echo ok")
    assert out == "ok\n"
    code, _, err = await docker.run("network", "connect", "back", "loner", ok=False)
    assert code == 1 and "already exists in network back" in err
    code, _, err = await docker.run("network", "rm", "back", ok=False)
    assert code == 1 and "has active endpoints" in err
    await docker.run("network", "disconnect", "back", "loner")
    doc = json.loads((await docker.run("inspect", "loner"))[1])[0]
    assert "back" not in doc["NetworkSettings"]["Networks"]
    _, out, _ = await docker.run("exec", "loner", "sh", "-c", "ip -4 addr | grep -c 'inet 172.28' || true")
    assert out.strip() == "0"

    await docker.run("network", "create", "--ipv6", "--subnet", "2001:db8:1::/64", "six")   # IPv6 beside IPv4
    six = json.loads((await docker.run("network", "inspect", "six"))[1])[0]
    assert six["EnableIPv6"] is True and six["IPAM"]["Config"][1] == {"Subnet": "2001:db8:1::/64",
                                                                      "Gateway": "2001:db8:1::1"}
    _, out, _ = await docker.run("run", "--rm", "--network", "six", "--ip6", "2001:db8:1::42", "busybox", "sh", "-c",
                                 "ip -6 addr show eth0 | grep -o 'inet6 2001[0-9a-f:/]*'; ip -6 route | grep default; "
                                 "ping -6 -c 1 -W 5 2001:db8:1::1 >/dev/null && echo reached6")
    assert out.splitlines() == ["inet6 2001:db8:1::42/64", "default via 2001:db8:1::1 dev eth0  metric 1024 ",
                                "reached6"], out
    await docker.run("network", "rm", "six")

    await docker.run("rm", "-f", "server", "loner")
    _, out, _ = await docker.run("network", "prune", "-f")
    assert sorted(out.split()[-2:]) == ["back", "quiet"]
    _, out, _ = await docker.run("network", "ls", "--format", "{{.Name}}")
    assert sorted(out.split()) == ["bridge", "host", "none"]
    code, _, err = await docker.run("network", "rm", "bridge", ok=False)
    assert code == 1 and "bridge is a pre-defined network and cannot be removed" in err
    code, _, err = await docker.run("network", "rm", "none", ok=False)
    assert code == 1 and "pre-defined network" in err
    code, _, err = await docker.run("network", "create", "-d", "host", "another", ok=False)
    assert code == 1 and 'only one instance of "host" network is allowed' in err
    seen = [(action, name) for action, name, _ in NETWORK_EVENTS]
    assert seen[:2] == [("create", "back"), ("create", "quiet")] and ("connect", "back") in seen
    assert seen.count(("disconnect", "back")) == 4 and seen[-2:] in ([("destroy", "back"), ("destroy", "quiet")],
                                                                     [("destroy", "quiet"), ("destroy", "back")])


LOOKUP = ("for n in {names}; do echo $n=$(nslookup $n 2>/dev/null | "      # each name's last address, or none
          "awk '/^Name:/ {{f=1}} f && /^Address/ {{a=$2}} END {{print a}}'); done")


async def test_embedded_dns_on_user_networks(docker: LocalDocker) -> None:
    await docker.run("network", "create", "--subnet", "172.29.0.0/24", "front")
    web_id = (await docker.run("run", "-d", "--name", "web", "--network", "front", "--network-alias", "site",
                               "busybox", "sleep", "1000"))[1].strip()
    client_id = (await docker.run("run", "-d", "--name", "client", "--network", "front", "busybox", "sleep",
                                  "1000"))[1].strip()
    await docker.run("network", "disconnect", "front", "client")       # links come with a connect (the CLI's
    await docker.run("network", "connect", "--link", "web:bar", "--link", "late:later", "front", "client")  # run
    endpoint = json.loads((await docker.run("inspect", "client"))[1])[0]["NetworkSettings"]["Networks"]["front"]
    assert endpoint["Links"] == ["web:bar", "late:later"]            # sends HostConfig.Links too, refused)
    assert endpoint["DNSNames"] == ["client", client_id[:12]]
    web_ip = json.loads((await docker.run("inspect", "web"))[1])[0]["NetworkSettings"]["Networks"]["front"][
        "IPAddress"]
    _, out, _ = await docker.run("exec", "client", "sh", "-c", "cat /etc/resolv.conf; " + LOOKUP.format(
        names=f"web site bar {web_id[:12]} later web.front nowhere"))
    assert out.splitlines() == ["nameserver 127.0.0.11", "options timeout:1 ndots:0",
                                f"web={web_ip}", f"site={web_ip}", f"bar={web_ip}",
                                f"{web_id[:12]}={web_ip}", "later=", f"web.front={web_ip}", "nowhere="]
    _, out, _ = await docker.run("exec", "web", "sh", "-c", LOOKUP.format(names="client bar"))
    assert out.splitlines() == [f"client={endpoint['IPAddress']}", "bar="]     # a link is its container's own
    await docker.run("run", "-d", "--name", "late", "--network", "front", "--mac-address", "02:42:ac:1d:00:99",
                     "busybox", "sleep", "1000")
    endpoint = json.loads((await docker.run("inspect", "late"))[1])[0]["NetworkSettings"]["Networks"]["front"]
    late_ip = endpoint["IPAddress"]
    assert endpoint["MacAddress"] == "02:42:ac:1d:00:99"
    _, out, _ = await docker.run("exec", "late", "sh", "-c", "ip link show eth0 | grep -o 'ether [0-9a-f:]*'")
    assert out == "ether 02:42:ac:1d:00:99\n"
    _, out, _ = await docker.run("exec", "client", "sh", "-c", LOOKUP.format(names="later"))
    assert out == f"later={late_ip}\n"          # a link's target that joins later resolves from then on

    await docker.run("run", "-d", "--name", "plain", "busybox", "sleep", "1000")      # the default bridge
    _, out, _ = await docker.run("exec", "plain", "cat", "/etc/resolv.conf")
    assert "127.0.0.11" not in out
    await docker.run("network", "connect", "--link", "web:db", "--driver-opt", "com.example.opt=on", "front", "plain")
    endpoint = json.loads((await docker.run("inspect", "plain"))[1])[0]["NetworkSettings"]["Networks"]["front"]
    assert endpoint["DriverOpts"] == {"com.example.opt": "on"} and endpoint["Links"] == ["web:db"]
    _, out, _ = await docker.run("exec", "plain", "sh", "-c", "head -1 /etc/resolv.conf; " + LOOKUP.format(names="db"))
    assert out.splitlines() == ["nameserver 127.0.0.11", f"db={web_ip}"]
    await docker.run("network", "disconnect", "front", "late")
    _, out, _ = await docker.run("exec", "client", "sh", "-c", LOOKUP.format(names="late later"))
    assert out.splitlines() == ["late=", "later="]
    await docker.networks.close_dns()          # a daemon restart: the servers are started again
    await docker.networks.start_dns()
    _, out, _ = await docker.run("exec", "client", "sh", "-c", LOOKUP.format(names="bar"))
    assert out == f"bar={web_ip}\n"
    await docker.run("rm", "-f", "web", "client", "late", "plain")
    await docker.run("network", "rm", "front")


def test_endpoint_config_extras_are_checked() -> None:
    assert endpoint_extras({"Links": ["a:b"], "MacAddress": "02:42:AC:11:00:02", "DriverOpts": {"k": "v"}}) == (
        ["a:b"], "02:42:ac:11:00:02", {"k": "v"})
    for bad, field in (({"Links": "a:b"}, "Links"), ({"MacAddress": "02:42:ac"}, "MacAddress"),
                       ({"MacAddress": "03:42:ac:11:00:02"}, "multicast"), ({"DriverOpts": {"k": 1}}, "DriverOpts")):
        with pytest.raises(ApiError) as caught:
            endpoint_extras(bad)
        assert caught.value.status == 400 and field in caught.value.message
