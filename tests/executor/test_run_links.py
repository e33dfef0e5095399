"""`docker run --network <user-defined> --link target:alias` with the real docker CLI (which sends
HostConfig.Links as well as the endpoint's Links): accepted, the alias resolves through the
embedded DNS in the linking container only; `--link` on the default bridge is a clear 400, and so
is an EndpointsConfig entry for a network other than the NetworkMode's (it was dropped).
The lab is tests/executor/test_local_networks.py's (bridges in a namespace the test makes)."""

from __future__ import annotations

import json

import aiohttp

from tests.executor.conftest import needs_root_and_runc
from tests.executor.test_local_networks import LOOKUP, LocalDocker, docker, host_ns  # noqa: F401  (fixtures)

pytestmark = needs_root_and_runc()


async def test_run_with_links_on_a_user_network(docker: LocalDocker) -> None:  # noqa: F811
    await docker.run("network", "create", "--subnet", "172.29.1.0/24", "back")
    try:
        await docker.run("run", "-d", "--name", "db", "--network", "back", "busybox", "sleep", "1000")
        await docker.run("run", "-d", "--name", "app", "--network", "back", "--link", "db:database",
                         "busybox", "sleep", "1000")
        doc = json.loads((await docker.run("inspect", "app"))[1])[0]
        assert doc["NetworkSettings"]["Networks"]["back"]["Links"] == ["db:database"]   # once, not twice
        db_ip = json.loads((await docker.run("inspect", "db"))[1])[0]["NetworkSettings"]["Networks"]["back"][
            "IPAddress"]
        _, out, _ = await docker.run("exec", "app", "sh", "-c", LOOKUP.format(names="database db"))
        assert out.splitlines() == [f"database={db_ip}", f"db={db_ip}"]
        _, out, _ = await docker.run("exec", "db", "sh", "-c", LOOKUP.format(names="database"))
        assert out == "database=\n"                       # a link is the linking container's own

        code, _, err = await docker.run("run", "--rm", "--network", "back", "--network", "nosuch", "busybox", "true",
                                        ok=False)          # a second network is refused, not dropped
        assert code == 125 and "network nosuch not found, or not the container's NetworkMode (back)" in err
        code, _, err = await docker.run("run", "--rm", "--link", "db:database", "busybox", "true", ok=False)
        assert code == 125 and "legacy links (--link, HostConfig.Links) are not supported on network" in err
        code, _, err = await docker.run("run", "--rm", "--network", "host", "--link", "db:x", "busybox", "true",
                                        ok=False)
        assert code == 125 and "host type networking can't be used with links" in err
    finally:
        await docker.run("rm", "-f", "db", "app", ok=False)
        await docker.run("network", "rm", "back")


async def test_config_mac_address_goes_to_the_default_bridge_endpoint(docker: LocalDocker) -> None:  # noqa: F811
    path = docker.env["DOCKER_HOST"].removeprefix("unix://")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session:
        async with session.post("http://d/v1.47/containers/create", json={     # docker-py's mac_address=
                "Image": "busybox", "Cmd": ["sleep", "1000"], "MacAddress": "02:42:ac:11:00:0a"}) as resp:
            assert resp.status == 201, await resp.text()
            cid = (await resp.json())["Id"]
        async with session.post("http://d/v1.47/containers/create", json={
                "Image": "busybox", "MacAddress": "02:42:ac:11:00:0b", "HostConfig": {"NetworkMode": "host"}}) as resp:
            assert resp.status == 400
            assert "conflicting options: mac-address and the network mode" in (await resp.json())["message"]
    try:
        await docker.run("start", cid)
        settings = json.loads((await docker.run("inspect", cid))[1])[0]["NetworkSettings"]
        assert settings["MacAddress"] == settings["Networks"]["bridge"]["MacAddress"] == "02:42:ac:11:00:0a"
        assert settings["IPAddress"] == settings["Networks"]["bridge"]["IPAddress"] != ""
        _, out, _ = await docker.run("exec", cid, "sh", "-c", "ip link show eth0 | grep -o 'ether [0-9a-f:]*'")
        assert out == "ether 02:42:ac:11:00:0a\n"
    finally:
        await docker.run("rm", "-f", cid)
