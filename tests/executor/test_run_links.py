"""`docker run --network <user-defined> --link target:alias` with the real docker CLI (which sends
HostConfig.Links as well as the endpoint's Links): accepted, the alias resolves through the
embedded DNS in the linking container only; `--link` on the default bridge is a clear 400, and so
is an EndpointsConfig entry for a network other than the NetworkMode's (it was dropped).
The lab is tests/executor/test_local_networks.py's (bridges in a namespace the test makes)."""

from __future__ import annotations

import json

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
