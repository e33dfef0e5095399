"""What a node asks of its data plane, from the dispatcher's views (node/balancing.py, the pure
part): VIP load balancers, the routing mesh, each task's side of it, draining and host ports."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from typing import Any

from ingress.dataplane import HostPort, IngressBackend, IngressNode
from model import Task
from node.balancing import (
    ingress_nodes,
    is_balancer,
    lb_former,
    lb_key,
    mesh_former,
    task_host_ports,
    wanted_lb,
    wanted_mesh,
    wanted_task,
)
from worker.networking import NetworkView


def view(*services: dict[str, Any], ingress: bool = False, node_address: str = "10.0.1.3/24",
         peers: list[dict[str, Any]] | None = None) -> NetworkView:
    return NetworkView.from_wire({"id": "net", "name": "app", "vni": 4097, "subnet": "10.0.1.0/24",
                                  "gateway": "10.0.1.1", "ingress": ingress, "node_address": node_address,
                                  "peers": peers or [], "services": list(services)})


def service(name: str, vip: str, *addresses: str, mode: str = "vip", ports: list[dict[str, Any]] | None = None,
            sid: str = "") -> dict[str, Any]:
    return {"name": name, "id": sid or f"id-{name}", "mode": mode, "vip": vip, "ports": ports or [],
            "tasks": [{"name": f"{name}.{i}", "id": f"{name}{i}", "address": a} for i, a in enumerate(addresses)]}


def test_a_vip_balances_the_tasks_in_rotation_and_dnsrr_gets_none() -> None:
    lb = wanted_lb(view(service("web", "10.0.1.2", "10.0.1.5", "10.0.1.6"), service("rr", "", "10.0.1.7",
                                                                                     mode="dnsrr")), {}, set())
    assert lb is not None and lb.address == A("10.0.1.3") and lb.device == "eth0"
    assert [(s.vip, s.backends, s.draining) for s in lb.services] == [
        (A("10.0.1.2"), (A("10.0.1.5"), A("10.0.1.6")), ())]
    assert wanted_lb(view(service("rr", "", "10.0.1.7", mode="dnsrr")), {}, set()) is None
    assert wanted_lb(view(service("web", "10.0.1.2", "10.0.1.5"), node_address=""), {}, set()) is None, \
        "no endpoint of its own on the network yet"
    assert wanted_lb(view(service("web", "10.0.1.2", "10.0.1.5"), ingress=True), {}, set()) is None, \
        "ingress is the mesh's"


def test_a_task_that_leaves_rotation_drains_while_its_endpoint_exists_then_goes() -> None:
    before = wanted_lb(view(service("web", "10.0.1.2", "10.0.1.5", "10.0.1.6")), {}, set())
    leaving = wanted_lb(view(service("web", "10.0.1.2", "10.0.1.6")), lb_former(before), {A("10.0.1.5"), A("10.0.1.6")})
    assert leaving is not None and leaving.services[0].draining == (A("10.0.1.5"),)
    still = wanted_lb(view(service("web", "10.0.1.2", "10.0.1.6")), lb_former(leaving), {A("10.0.1.5"), A("10.0.1.6")})
    assert still == leaving, "draining is kept from one view to the next"
    gone = wanted_lb(view(service("web", "10.0.1.2", "10.0.1.6")), lb_former(still), {A("10.0.1.6")})
    assert gone is not None and gone.services[0].draining == ()
    back = wanted_lb(view(service("web", "10.0.1.2", "10.0.1.5", "10.0.1.6")), lb_former(leaving), {A("10.0.1.5")})
    assert back is not None and back.services[0].backends == (A("10.0.1.5"), A("10.0.1.6")) \
        and back.services[0].draining == ()


def test_the_mesh_publishes_each_port_to_the_tasks_target_port_and_drains_the_same_way() -> None:
    web = service("web", "10.0.0.2", "10.0.0.5", "10.0.0.6", ports=[{"protocol": "tcp", "published": 8080,
                                                                     "target": 80}])
    dns = service("dns", "10.0.0.3", "10.0.0.7", ports=[{"protocol": "udp", "published": 53, "target": 5353}])
    mesh = wanted_mesh(view(web, dns, ingress=True, node_address="10.0.0.9/24"), A("172.18.0.2"), "gwb", {},
                       set())
    assert mesh is not None and mesh.ingress_address == A("10.0.0.9") and mesh.sandbox_address == A("172.18.0.2")
    assert {p.key: p.backends for p in mesh.ports} == {
        ("tcp", 8080): (IngressBackend(A("10.0.0.5"), 80), IngressBackend(A("10.0.0.6"), 80)),
        ("udp", 53): (IngressBackend(A("10.0.0.7"), 5353),)}
    fewer = service("web", "10.0.0.2", "10.0.0.6", ports=[{"protocol": "tcp", "published": 8080, "target": 80}])
    drained = wanted_mesh(view(fewer, ingress=True, node_address="10.0.0.9/24"), A("172.18.0.2"), "gwb",
                          mesh_former(mesh), {A("10.0.0.5")})
    assert drained is not None and drained.by_key()[("tcp", 8080)].draining == (IngressBackend(A("10.0.0.5"), 80),)
    assert ("udp", 53) not in drained.by_key()
    assert wanted_mesh(view(web, ingress=True, node_address=""), A("172.18.0.2"), "gwb", {}, set()) is None


def test_a_task_on_ingress_takes_its_target_ports_and_knows_every_node() -> None:
    peers: list[dict[str, Any]] = [{"ip": "10.0.0.4", "mac": "02:42:0a:00:00:04", "vtep": "198.18.0.2", "node": True},
             {"ip": "10.0.0.5", "mac": "02:42:0a:00:00:05", "vtep": "198.18.0.2"}]
    ingress = view(service("web", "10.0.0.2", "10.0.0.5", sid="s1", ports=[
        {"protocol": "tcp", "published": 8080, "target": 80}, {"protocol": "tcp", "published": 8443, "target": 443}]),
        ingress=True, node_address="10.0.0.9/24", peers=peers)
    assert ingress_nodes(ingress) == (IngressNode(A("10.0.0.4")), IngressNode(A("10.0.0.9")))
    task = wanted_task(ingress, "s1", "eth0", A("10.0.0.8"))
    assert task.ports == (("tcp", 80), ("tcp", 443)) and task.nodes == ingress_nodes(ingress)
    assert wanted_task(ingress, "other", "eth0", A("10.0.0.8")).ports == ()


def test_host_ports_come_from_the_tasks_endpoint_and_balancer_keys_are_told_apart() -> None:
    task = Task(id="t1", spec={}, endpoint={"Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"},
        {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 0, "PublishMode": "host"},
        {"Protocol": "tcp", "TargetPort": 81, "PublishedPort": 9090, "PublishMode": "ingress"}]})
    assert task_host_ports(task, A("172.18.0.5")) == (HostPort("tcp", 8080, A("172.18.0.5"), 80),)
    assert is_balancer("ingress-sbox") and is_balancer(lb_key("abc")) and not is_balancer("t1")
