"""docker inspect's NetworkSettings.Networks of a task's container: one entry per attachment the
allocator made (address, MAC 02:42 + IP, network ID, the endpoint ID the network views use, the
aliases the spec asks for), built without containers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from worker.exec import ContainerState
from worker.executor.container_view import ContainerView, endpoint_id, inspect, summary
from worker.executor.spec import ContainerConfig
from worker.executor.task_executor import attached_networks

TASK = SimpleNamespace(
    spec={"Networks": [{"Target": "net1", "Aliases": ["db"]}, {"Target": "backend"}]},
    networks_attachments=[
        {"Network": {"ID": "net1", "Spec": {"Name": "front"}}, "Addresses": ["10.0.1.5/24"]},
        {"Network": {"ID": "net2", "Spec": {"Name": "backend"}}, "Addresses": ["10.0.2.7/24"]},
        {"Network": {"ID": "net3", "Spec": {"Name": "pending"}}, "Addresses": []},
    ])


def test_a_task_containers_networks_in_inspect_and_ps() -> None:
    networks = attached_networks(TASK)
    assert [(n["name"], n["address"], n["aliases"]) for n in networks] == [
        ("front", "10.0.1.5/24", ["db"]), ("backend", "10.0.2.7/24", [])]
    config = ContainerConfig(id="task1", name="web.1.task1", lower_dirs=[Path("/l")], args=["sh"],
                             netns_path="/run/netns/t", networks=networks)
    view = ContainerView(config, ContainerState("running", 42), 1000.0)
    settings = inspect(view)["NetworkSettings"]["Networks"]
    assert list(settings) == ["front", "backend"]
    front = settings["front"]
    assert (front["IPAddress"], front["IPPrefixLen"], front["MacAddress"]) == ("10.0.1.5", 24, "02:42:0a:00:01:05")
    assert front["NetworkID"] == "net1" and front["EndpointID"] == endpoint_id("net1", "task1")
    assert front["Aliases"] == ["db"] and settings["backend"]["Aliases"] is None
    assert summary(view)["NetworkSettings"]["Networks"]["backend"]["IPAddress"] == "10.0.2.7"
    round_tripped = ContainerConfig.from_json(config.to_json())
    assert round_tripped.networks == networks
    bare = ContainerView(ContainerConfig(id="c", name="c", lower_dirs=[Path("/l")], args=["sh"]),
                         ContainerState("running", 1), 1000.0)
    assert inspect(bare)["NetworkSettings"]["Networks"] == {"none": {}}
