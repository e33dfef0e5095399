"""docker-py's swarm and node API against a lab host's daemon (through its unix socket)."""

from __future__ import annotations

import docker
import pytest

from cli.lab import Lab


def test_docker_py_swarm_init_inspect_nodes_update_leave(make_lab) -> None:
    lab: Lab = make_lab(managers=1, workers=0, swarm=False)
    client = docker.DockerClient(base_url=lab.node("manager-1").host, version="1.44")
    try:
        node_id = client.swarm.init(advertise_addr=lab.node("manager-1").address, listen_addr="0.0.0.0:2377",
                                    task_history_retention_limit=3)
        client.swarm.reload()
        assert client.swarm.attrs["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 3
        assert client.swarm.attrs["JoinTokens"]["Worker"].startswith("SWMTKN-1-")
        nodes = client.nodes.list()
        assert [n.id for n in nodes] == [node_id]
        node = nodes[0]
        assert node.attrs["Spec"] == {"Labels": {}, "Role": "manager", "Availability": "active"}
        # init writes the node as its session reports it (TLSInfo included), so no second write
        # bumps its version under a client that updates it at once (docker-py's test_update_node)
        assert node.attrs["Description"]["TLSInfo"]["TrustRoot"].startswith("-----BEGIN CERTIFICATE-----")
        node.update({"Availability": "pause", "Role": "manager", "Labels": {"a": "b"}})
        node.reload()
        assert node.attrs["Spec"] == {"Availability": "pause", "Role": "manager", "Labels": {"a": "b"}}
        old = client.swarm.attrs["JoinTokens"]["Worker"]
        client.swarm.update(rotate_worker_token=True)
        client.swarm.reload()
        assert client.swarm.attrs["JoinTokens"]["Worker"] != old
        with pytest.raises(docker.errors.APIError) as info:
            client.swarm.leave()
        assert info.value.status_code == 503 and "Use `--force`" in str(info.value)
        assert client.swarm.leave(force=True) is True
        with pytest.raises(docker.errors.APIError) as info:
            client.nodes.list()
        assert info.value.status_code == 503
    finally:
        client.close()
