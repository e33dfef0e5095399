"""`shoal network create|ls|inspect|rm|prune` as subprocesses against the served API: the docker
CLI's requests, texts, prompts and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from manager.allocator import ingress_network
from tests.api.support import StoreCluster, build_app, new_store, serve_unix
from tests.api.test_cli import Shoal
from tests.api.test_network_rules import allocate

INGRESS_PROMPT = ("WARNING! Before removing the routing-mesh network, make sure all the nodes in your swarm run the "
                  "same docker engine version. Otherwise, removal may not be effective and functionality of newly "
                  "create ingress networks will be impaired.\nAre you sure you want to continue? [y/N] ")
PRUNE_PROMPT = ("WARNING! This will remove all custom networks not used by at least one container.\n"
                "Are you sure you want to continue? [y/N] ")


async def test_network_commands(tmp_path: Path) -> None:
    store = new_store()
    await store.update(lambda tx: tx.create(ingress_network()))
    async with serve_unix(build_app(StoreCluster(store), tmp_path), tmp_path / "api.sock") as host:
        shoal = Shoal(host)
        _, out, _ = await shoal.run("network", "create", "--subnet", "10.20.0.0/16", "--ip-range", "10.20.5.0/24",
                                    "--gateway", "10.20.5.254", "--aux-address", "a=10.20.1.5", "--label", "tier=front",
                                    "--label", "bare", "-o", "com.docker.network.driver.mtu=1400", "--attachable",
                                    "--internal", "back")
        back_id = out.strip()
        await allocate(store)
        _, out, _ = await shoal.run("network", "inspect", "back")
        shown = json.loads(out)
        assert len(shown) == 1 and shown[0]["Id"] == back_id
        net = shown[0]
        assert net["Driver"] == "overlay" and net["Scope"] == "swarm" and net["Attachable"] and net["Internal"]
        assert net["Labels"] == {"tier": "front", "bare": ""}
        assert net["Options"]["com.docker.network.driver.mtu"] == "1400"
        assert net["IPAM"]["Config"] == [{"Subnet": "10.20.0.0/16", "IPRange": "10.20.5.0/24",
                                          "Gateway": "10.20.5.254", "AuxiliaryAddresses": {"a": "10.20.1.5"}}]
        _, out, _ = await shoal.run("network", "create", "front-2")
        front_id = out.strip()

        # the docker CLI's client-side IPAM checks, one line each, no traceback
        for args, text in ((["--gateway", "10.9.0.1"], "every ip-range or gateway must have a corresponding subnet"),
                           (["--subnet", "10.9.0.0/24", "--gateway", "10.8.0.1"],
                            "no matching subnet for gateway 10.8.0.1"),
                           (["--subnet", "10.9.0.0/24", "--ip-range", "10.8.0.0/25"],
                            "no matching subnet for range 10.8.0.0/25"),
                           (["--subnet", "10.9.0.0/16", "--subnet", "10.9.1.0/24"],
                            "multiple overlapping subnet configuration is not supported"),
                           (["--subnet", "10.9.0.0/24", "--aux-address", "x=10.8.0.1"],
                            "no matching subnet for aux-address 10.8.0.1")):
            code, _, err = await shoal.run("network", "create", *args, "bad", ok=False)
            assert (code, err.strip()) == (1, text), args
        code, _, err = await shoal.run("network", "create", "--subnet", "nonsense", "bad", ok=False)
        assert code == 2 and 'invalid argument "nonsense" for "--subnet" flag' in err and "Traceback" not in err
        code, _, err = await shoal.run("network", "create", "--ingress", "--attachable", "bad", ok=False)
        assert code == 1 and err.strip() == \
            "Error response from daemon: rpc error: code = InvalidArgument desc = ingress network cannot be attachable"

        _, out, _ = await shoal.run("network", "ls")
        lines = out.splitlines()
        assert lines[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
        assert [line.split()[1] for line in lines[1:]] == ["back", "front-2", "ingress"]
        assert lines[1].split() == [back_id[:12], "back", "overlay", "swarm"]
        _, out, _ = await shoal.run("network", "ls", "-q", "--no-trunc", "--filter", "name=front")
        assert out.split() == [front_id]

        # inspect: the found ones on stdout, each failure on stderr, exit 1
        code, out, err = await shoal.run("network", "inspect", "front-2", "nosuch", ok=False)
        assert code == 1 and [n["Name"] for n in json.loads(out)] == ["front-2"]
        assert err.strip() == "Error response from daemon: network nosuch not found"

        # rm: the routing mesh asks first; an answer other than y keeps it
        code, out, _ = await shoal.run("network", "rm", "ingress", stdin=b"n\n")
        assert (code, out) == (0, INGRESS_PROMPT)
        code, out, err = await shoal.run("network", "rm", "nosuch", "front-2", ok=False)
        assert code == 1 and out.strip() == "front-2" and err.strip() == \
            "Error response from daemon: network nosuch not found"
        await shoal.run("network", "rm", "-f", "nosuch")
        code, out, _ = await shoal.run("network", "rm", "ingress", stdin=b"y\n")
        assert out == INGRESS_PROMPT + "ingress\n"
        _, out, _ = await shoal.run("network", "create", "-d", "overlay", "--ingress", "--subnet", "10.11.0.0/16",
                                    "my-ingress")
        assert json.loads((await shoal.run("network", "inspect", "my-ingress"))[1])[0]["Ingress"] is True
        _, out, _ = await shoal.run("network", "rm", "-f", "my-ingress")
        assert out == "my-ingress\n"

        # prune: asks first (no is a quiet no), then lists what it removed
        await shoal.run("network", "create", "spare")
        code, out, _ = await shoal.run("network", "prune", stdin=b"\n")
        assert (code, out) == (0, PRUNE_PROMPT)
        code, out, _ = await shoal.run("network", "prune", "--filter", "until=10m", "-f")
        assert (code, out) == (0, "")
        _, out, _ = await shoal.run("network", "prune", stdin=b"y\n")
        assert out == PRUNE_PROMPT + "Deleted Networks:\nback\nspare\n\n"
        code, _, err = await shoal.run("network", "prune", "-f", "--filter", "bogus=1", ok=False)
        assert code == 1 and err.strip() == "Error response from daemon: invalid filter 'bogus'"
        _, out, _ = await shoal.run("network", "ls", "-q")
        assert out == ""
