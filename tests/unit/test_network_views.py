"""The agent's picture of its networks: complete sets, increments, bad views, task attachments."""

from __future__ import annotations

from typing import Any

import pytest

from model import Task
from worker.networking import NetworkView, NetworkViews, PeerView


def view(net_id: str, vni: int = 4097, **extra: Any) -> dict[str, Any]:
    return {"id": net_id, "name": f"net-{net_id}", "vni": vni, "subnet": "10.0.1.0/24", "gateway": "10.0.1.1",
            "mtu": 1450, **extra}


def test_a_complete_set_replaces_and_increments_change_only_what_they_name() -> None:
    views = NetworkViews()
    assert not views.known
    assert views.apply({"kind": "networks", "type": "complete", "data_path_port": 4242,
                        "networks": [view("a"), view("b", 4098)]}) == []
    assert views.known and set(views.views) == {"a", "b"} and views.data_path_port == 4242
    first = views.version
    peers = [{"ip": "10.0.1.5", "mac": "02:42:0A:00:01:05", "vtep": "198.18.0.12"}]
    views.apply({"kind": "networks", "type": "incremental", "data_path_port": 4242,
                 "networks": [view("a", peers=peers)], "removed": ["b"]})
    assert set(views.views) == {"a"} and views.version == first + 1
    assert views.views["a"].peers == frozenset({PeerView("10.0.1.5", "02:42:0a:00:01:05", "198.18.0.12")})
    views.apply({"kind": "networks", "type": "incremental", "data_path_port": 4242,
                 "networks": [view("a", peers=peers)]})
    assert views.version == first + 1, "the same view again changes nothing"
    views.apply({"kind": "networks", "type": "complete", "data_path_port": 4242, "networks": []})
    assert views.views == {} and views.version == first + 2


def test_a_malformed_view_is_skipped_and_named() -> None:
    views = NetworkViews()
    problems = views.apply({"type": "complete", "networks": [view("ok"), view("bad", vni=0),
                                                             {"id": "nosubnet", "vni": 5000},
                                                             view("badtask", services=[{"name": "s", "tasks": [
                                                                 {"name": "s.1.x", "id": "x", "address": "nope"}]}])]})
    assert set(views.views) == {"ok"}
    assert len(problems) == 3 and any("bad" in p and "VXLAN id 0" in p for p in problems)


def test_service_and_task_records_keep_plain_addresses() -> None:
    v = NetworkView.from_wire(view("a", services=[{"name": "web", "id": "s1", "vip": "10.0.1.2/24", "tasks": [
        {"name": "web.1.t1", "id": "t1", "address": "10.0.1.5/24", "hostname": "h", "aliases": ["w"]}]}]))
    service = v.services[0]
    assert service.vip == "10.0.1.2" and service.tasks[0].address == "10.0.1.5"
    assert service.tasks[0].container_id == "t1" and service.tasks[0].aliases == ("w",)


def test_task_networks_follow_the_attachment_order_and_name_an_unknown_network() -> None:
    views = NetworkViews()
    views.apply({"type": "complete", "networks": [view("a"), view("b", 4098)]})
    task = Task(id="t1", service_id="s1", networks_attachments=[
        {"Network": {"ID": "b"}, "Addresses": ["10.0.1.9/24"]},
        {"Network": {"ID": "a"}, "Addresses": ["10.0.1.5/24"]}])
    assert [(v.id, a) for v, a in views.task_networks(task)] == [("b", "10.0.1.9/24"), ("a", "10.0.1.5/24")]
    task.networks_attachments.append({"Network": {"ID": "c"}, "Addresses": ["10.0.2.5/24"]})
    with pytest.raises(KeyError) as err:
        views.task_networks(task)
    assert err.value.args == ("c",)


def test_node_endpoints_and_published_ports_are_kept() -> None:
    v = NetworkView.from_wire(view("ing", ingress=True, peers=[
        {"ip": "10.0.0.2", "mac": "02:42:0a:00:00:02", "vtep": "198.18.0.1", "node": True},
        {"ip": "10.0.0.7", "mac": "02:42:0a:00:00:07", "vtep": "198.18.0.1"}],
        services=[{"name": "web", "id": "s1", "vip": "10.0.0.5", "ports": [
            {"protocol": "TCP", "published": 8080, "target": 80}, {"protocol": "udp", "published": 53, "target": 5353}],
            "tasks": []}]))
    assert {p.ip for p in v.peers if p.node} == {"10.0.0.2"}
    assert [(p.protocol, p.published, p.target) for p in v.services[0].ports] == [("tcp", 8080, 80), ("udp", 53, 5353)]
