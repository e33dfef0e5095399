"""NodeNetworking's read-only node-local view (what the Engine API merges in): built from the pushed
views, this node's sandboxes and what it remembers of the tasks it sandboxed. No kernel: the
sandbox records are handed in as the overlay host would report them."""

from __future__ import annotations

from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from manager.api.local_networks import LocalEndpoint, LocalPeer, LocalService, LocalServiceTask, local_api
from model import Task
from node.networking import LocalNetworkSource, NodeNetworking
from overlay import AttachmentRecord, SandboxRecord
from worker.networking import NetworkViews

OWN_VTEP = "198.18.0.11"
LOCAL_TASK = "l0calt4sk0000000000000001"
REMOTE_TASK = "rem0tet4sk000000000000002"


def views() -> NetworkViews:
    out = NetworkViews()
    out.apply({"kind": "networks", "type": "complete", "data_path_port": 4789, "networks": [
        {"id": "ingressid", "name": "ingress", "vni": 4096, "subnet": "10.0.0.0/24", "gateway": "10.0.0.1",
         "mtu": 1450, "ingress": True, "node_address": "10.0.0.2/24"},
        {"id": "webnetid", "name": "web-net", "vni": 4097, "subnet": "10.0.1.0/24", "gateway": "10.0.1.1",
         "mtu": 1450, "node_address": "10.0.1.3/24",
         "peers": [{"ip": "10.0.1.6", "mac": "02:42:0a:00:01:06", "vtep": "198.18.0.12"},
                   {"ip": "10.0.1.4", "mac": "02:42:0a:00:01:04", "vtep": "198.18.0.12"}],
         "services": [{"name": "web", "id": "svc1", "vip": "", "tasks": [
             {"name": f"web.2.{REMOTE_TASK}", "id": REMOTE_TASK, "address": "10.0.1.6"},
             {"name": f"web.1.{LOCAL_TASK}", "id": LOCAL_TASK, "address": "10.0.1.5"}]}]},
    ]})
    return out


async def test_local_networks_from_views_sandboxes_and_remembered_tasks(tmp_path: Path) -> None:
    networking = NodeNetworking(tmp_path, lambda: OWN_VTEP)
    assert await networking.local_networks() == []          # nothing pushed yet: nothing instantiated
    networking._views = views()

    async def records() -> dict[str, SandboxRecord]:
        return {LOCAL_TASK: SandboxRecord(LOCAL_TASK, (
            AttachmentRecord("webnetid", IPv4Interface("10.0.1.5/24"), "eth0"),)),
                "t4skwithoutnetworks000003": SandboxRecord("t4skwithoutnetworks000003")}

    networking._sandbox_records = records     # type: ignore[method-assign]
    swarm_network: dict[str, Any] = {
        "ID": "webnetid", "CreatedAt": "2026-01-02T03:04:05.000000006Z",
        "Spec": {"Name": "web-net", "Labels": {"tier": "front"},
                 "DriverConfiguration": {"Name": "overlay", "Options": {"com.docker.network.driver.mtu": "1400"}}},
        "DriverState": {"Name": "overlay", "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4097"}}}
    networking._remember(Task(id=LOCAL_TASK, service_id="svc1", slot=1, service_name="web", networks_attachments=[
        {"Network": swarm_network, "Addresses": ["10.0.1.5/24"]}]))

    ingress, web = await LocalNetworkSource(networking, "node-a", lambda: "n0de0000000000000000000001").local_networks()
    assert ingress.name == "ingress" and ingress.ingress and ingress.endpoints == ()
    assert ingress.peers == (LocalPeer(OWN_VTEP, "node-a-n0de00000000"),)     # every node has ingress
    assert ingress.created                                                    # when this node first had it
    assert web.endpoints == (LocalEndpoint(LOCAL_TASK, f"web.1.{LOCAL_TASK}", "10.0.1.5/24"),)
    assert web.node_address == "10.0.1.3/24"
    assert sorted(web.peers, key=lambda p: p.ip) == [LocalPeer(OWN_VTEP, "node-a-n0de00000000"),
                                                     LocalPeer("198.18.0.12")]
    assert web.services == (LocalService("web", "svc1", "", (
        LocalServiceTask(f"web.2.{REMOTE_TASK}", REMOTE_TASK, "10.0.1.6", "198.18.0.12"),
        LocalServiceTask(f"web.1.{LOCAL_TASK}", LOCAL_TASK, "10.0.1.5", OWN_VTEP))),)
    assert web.created == "2026-01-02T03:04:05.000000006Z" and web.labels == {"tier": "front"}
    assert web.options == {"com.docker.network.driver.mtu": "1400"}
    shown = local_api(web)
    assert shown["Options"] == {"com.docker.network.driver.mtu": "1400",
                                "com.docker.network.driver.overlay.vxlanid_list": "4097"}
    assert set(shown["Containers"]) == {LOCAL_TASK, "lb-web-net"}

    # a task that is gone is named from the DNS view, else by its ID
    await networking.release(LOCAL_TASK)
    _, web = await networking.local_networks()
    assert web.endpoints[0].name == f"web.1.{LOCAL_TASK}"
    await networking.purge()
    assert await networking.local_networks() == []
