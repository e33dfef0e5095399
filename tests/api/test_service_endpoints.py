"""Service endpoints through the API: EndpointSpec validation and published-port conflicts with
Docker's texts and statuses, and the shapes of Spec.EndpointSpec and Endpoint (Spec, Ports,
VirtualIPs) before and after the allocator (driven round by round here: no sleeps)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from manager.allocator import Allocator, ingress_network
from manager.store import Store
from tests.api.support import call
from tests.api.test_services import body, create

RPC = "rpc error: code = InvalidArgument desc = "


def ports(*items: tuple[int, int] | tuple[int, int, str] | tuple[int, int, str, str]) -> dict[str, Any]:
    """An EndpointSpec: (target, published[, protocol[, mode]]) per port (published 0: left out)."""
    out = []
    for item in items:
        port: dict[str, Any] = {"TargetPort": item[0]}
        if item[1]:
            port["PublishedPort"] = item[1]
        if len(item) > 2:
            port["Protocol"] = item[2]
        if len(item) > 3:
            port["PublishMode"] = item[3]
        out.append(port)
    return {"Mode": "vip", "Ports": out}


async def service(client: TestClient, name: str, endpoint: dict[str, Any] | None, **more: Any) -> str:
    spec = body(Name=name, **more)
    if endpoint is None:
        del spec["EndpointSpec"]
    else:
        spec["EndpointSpec"] = endpoint
    return await create(client, spec)


async def refused(client: TestClient, path: str, spec: dict[str, Any], **params: Any) -> tuple[int, str]:
    status, err = await call(client, "POST", path, spec, **params)
    return status, err["message"]


async def inspect(client: TestClient, ref: str) -> dict[str, Any]:
    _, svc = await call(client, "GET", f"/services/{ref}", expect=200)
    return dict(svc)


async def update(client: TestClient, ref: str, change: Any, expect: int = 200) -> tuple[int, Any]:
    svc = await inspect(client, ref)
    spec = svc["Spec"]
    change(spec)
    return await call(client, "POST", f"/services/{svc['ID']}/update", spec, expect=expect,
                      version=str(svc["Version"]["Index"]))


async def settle(store: Store) -> None:
    """Allocator rounds until nothing more is written (a fresh allocator: as a new leader would)."""
    allocator = Allocator(store)
    _, sub = store.view_and_watch(allocator.load, tables=Allocator.TABLES)
    try:
        for _ in range(20):
            before = store.index
            await allocator.tick()
            for event in sub.drain():
                allocator.handle(event)
            if store.index == before:
                return
        raise AssertionError("the allocator did not settle")
    finally:
        sub.close()


async def test_endpoint_spec_errors_are_dockers(client: TestClient) -> None:
    assert await refused(client, "/services/create", body(Name="rr", EndpointSpec={
        "Mode": "dnsrr", "Ports": [{"TargetPort": 80}]})) == \
        (400, RPC + "EndpointSpec: port published with ingress mode can't be used with dnsrr mode")
    assert await refused(client, "/services/create", body(Name="dup", EndpointSpec=ports((80, 8080), (81, 8080)))) == \
        (400, RPC + "EndpointSpec: duplicate published ports provided")
    # dnsrr with a host-mode port is fine (no routing mesh involved), as in Docker
    await service(client, "rr", {"Mode": "dnsrr", "Ports": [{"TargetPort": 80, "PublishedPort": 8080,
                                                             "PublishMode": "host"}]})
    _, err = await update(client, "rr", lambda s: s["EndpointSpec"].update(Mode="vip", Ports=[
        {"TargetPort": 80, "PublishedPort": 8080}, {"TargetPort": 81, "PublishedPort": 8080}]), expect=400)
    assert err["message"] == RPC + "EndpointSpec: duplicate published ports provided"


async def test_published_port_conflicts_name_the_service_that_holds_the_port(client: TestClient, store: Store) -> None:
    assert await refused(client, "/services/create", body(Name="early", EndpointSpec=ports((80, 8080)))) == \
        (400, "rpc error: code = FailedPrecondition desc = service needs ingress network, "
              "but no ingress network is present")
    await store.update(lambda tx: tx.create(ingress_network()))
    web = await service(client, "web", ports((80, 8080)))
    host = await service(client, "host", ports((80, 9090, "tcp", "host")))
    for name, endpoint, number, holder, sid, mode in (
            ("a", ports((81, 8080)), 8080, "web", web, "an ingress port"),
            ("b", ports((81, 8080, "tcp", "host")), 8080, "web", web, "an ingress port"),
            ("c", ports((81, 9090)), 9090, "host", host, "a host-published port")):
        assert await refused(client, "/services/create", body(Name=name, EndpointSpec=endpoint)) == \
            (400, RPC + f"port '{number}' is already in use by service '{holder}' ({sid}) as {mode}")
    # host-mode ports may be shared (the scheduler keeps their tasks apart); another protocol is another port
    await service(client, "host2", ports((80, 9090, "tcp", "host")))
    await service(client, "dns", ports((53, 8080, "udp")))
    # a service keeps its own ports on update; another one cannot take them by an update either
    await update(client, "web", lambda s: s["Labels"].update(touched="yes"))
    _, err = await update(client, "dns", lambda s: s["EndpointSpec"]["Ports"].append(
        {"TargetPort": 80, "PublishedPort": 8080}), expect=400)
    assert err["message"] == RPC + f"port '8080' is already in use by service 'web' ({web}) as an ingress port"
    # once web lets the port go, it is free
    await update(client, "web", lambda s: s["EndpointSpec"].update(Ports=[{"TargetPort": 80, "PublishedPort": 8081}]))
    await update(client, "dns", lambda s: s["EndpointSpec"]["Ports"].append({"TargetPort": 80, "PublishedPort": 8080}))
    assert (await client.delete("/services/dns")).status == 200
    await service(client, "again", ports((80, 8080)))


async def test_endpoint_shapes_before_and_after_allocation(client: TestClient, store: Store) -> None:
    ingress = ingress_network()
    await store.update(lambda tx: tx.create(ingress))
    _, net = await call(client, "POST", "/networks/create", {"Name": "app", "Driver": "overlay"}, expect=201)
    plain = await service(client, "plain", None)
    svc = await inspect(client, plain)
    assert "EndpointSpec" not in svc["Spec"] and svc["Endpoint"] == {"Spec": {}}

    endpoint = {"Mode": "VIP", "Ports": [{"TargetPort": 80, "Protocol": "TCP"},
                                         {"TargetPort": 53, "PublishedPort": 5353, "Protocol": "UDP"},
                                         {"TargetPort": 81, "PublishedPort": 8081, "PublishMode": "Host"}]}
    web = await service(client, "web", endpoint, TaskTemplate={**body()["TaskTemplate"],
                                                               "Networks": [{"Target": "app"}]})
    stored = {"Mode": "vip", "Ports": [
        {"TargetPort": 80, "Protocol": "tcp", "PublishMode": "ingress"},
        {"TargetPort": 53, "PublishedPort": 5353, "Protocol": "udp", "PublishMode": "ingress"},
        {"TargetPort": 81, "PublishedPort": 8081, "PublishMode": "host", "Protocol": "tcp"}]}
    svc = await inspect(client, web)
    assert svc["Spec"]["EndpointSpec"] == stored and svc["Endpoint"] == {"Spec": stored}

    await settle(store)
    svc = await inspect(client, web)
    assert svc["Spec"]["EndpointSpec"] == stored            # an auto port is shown only in Endpoint.Ports
    assert svc["Endpoint"] == {"Spec": stored, "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 30000, "PublishMode": "ingress"},
        {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353, "PublishMode": "ingress"},
        {"Protocol": "tcp", "TargetPort": 81, "PublishedPort": 8081, "PublishMode": "host"}],
        "VirtualIPs": [{"NetworkID": ingress.id, "Addr": "10.0.0.2/24"},      # ingress first
                       {"NetworkID": net["Id"], "Addr": "10.0.1.2/24"}]}
    _, listed = await call(client, "GET", "/services", expect=200, filters='{"name":["web"]}')
    assert listed[0]["Endpoint"] == svc["Endpoint"]
    assert (await inspect(client, plain))["Endpoint"] == {"Spec": {}}

    # the auto port is taken: asking for it explicitly is a conflict, and the next auto port differs
    assert await refused(client, "/services/create", body(Name="x", EndpointSpec=ports((80, 30000)))) == \
        (400, RPC + f"port '30000' is already in use by service 'web' ({web}) as an ingress port")
    other = await service(client, "other", ports((80, 0)))
    await settle(store)
    assert [p["PublishedPort"] for p in (await inspect(client, other))["Endpoint"]["Ports"]] == [30001]

    # an update keeps the port and the VIPs; dnsrr drops the VIPs (host-mode ports only, then)
    before = (await inspect(client, web))["Endpoint"]
    await update(client, web, lambda s: s["Labels"].update(touched="yes"))
    await settle(store)
    assert (await inspect(client, web))["Endpoint"] == before
    await update(client, web, lambda s: s.update(EndpointSpec={"Mode": "dnsrr", "Ports": [
        {"TargetPort": 81, "PublishedPort": 8081, "PublishMode": "host"}]}))
    await settle(store)
    assert (await inspect(client, web))["Endpoint"] == {
        "Spec": {"Mode": "dnsrr", "Ports": [{"TargetPort": 81, "PublishedPort": 8081, "PublishMode": "host",
                                             "Protocol": "tcp"}]},
        "Ports": [{"Protocol": "tcp", "TargetPort": 81, "PublishedPort": 8081, "PublishMode": "host"}]}
