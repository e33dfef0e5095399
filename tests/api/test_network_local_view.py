"""The network routes' two views (../shared/networking.md §1.1): the cluster view from the store and
the node-local view of the networks this node instantiated (Containers, Peers, verbose Services),
merged as dockerd merges them on a manager, a worker and a daemon outside any swarm; the lookup
rules (scope, ambiguity); and `POST /networks/prune`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.allocator import ingress_network
from manager.api.cluster import NOT_IN_SWARM, WORKER_NODE
from manager.api.local_networks import (
    LOCAL_NETWORKS,
    LocalEndpoint,
    LocalNetwork,
    LocalPeer,
    LocalService,
    LocalServiceTask,
    endpoint_id,
    local_api,
)
from manager.api.networks import parse_until
from manager.store import Store, WriteTx
from model import Network, StoreObject, TaskState, new_id, parse_time
from tests.api.support import NODE_ID, StoreCluster, add_node, build_app, call
from tests.api.test_network_rules import add_task, allocate, new_network
from tests.api.test_services import CLI_BODY, body, create

VXLAN = "com.docker.network.driver.overlay.vxlanid_list"
TASK = "t4sk00000000000000000000a1"
REMOTE_TASK = "t4sk00000000000000000000b2"


class FakeLocal:
    """This node's instantiated networks, as node/networking.py would report them."""

    def __init__(self, networks: list[LocalNetwork] | None = None) -> None:
        self.networks = networks or []

    async def local_networks(self) -> list[LocalNetwork]:
        return list(self.networks)


def web_net(network_id: str, name: str = "web-net", **changes: Any) -> LocalNetwork:
    fields: dict[str, Any] = dict(
        id=network_id, name=name, subnet="10.0.1.0/24", gateway="10.0.1.1", vni=4097,
        node_address="10.0.1.3/24",
        endpoints=(LocalEndpoint(TASK, f"web.1.{TASK}", "10.0.1.5/24"),),
        peers=(LocalPeer("127.0.0.1", "node-a-fromnode"), LocalPeer("198.18.0.12")),
        services=(LocalService("web", "svc1", "10.0.1.2", (
            LocalServiceTask(f"web.2.{REMOTE_TASK}", REMOTE_TASK, "10.0.1.6", "198.18.0.12"),
            LocalServiceTask(f"web.1.{TASK}", TASK, "10.0.1.5", "127.0.0.1"))),),
        created="2026-01-02T03:04:05.000000006Z", labels={"tier": "front"})
    fields.update(changes)
    return LocalNetwork(**fields)


def ingress_local(network_id: str) -> LocalNetwork:
    return LocalNetwork(id=network_id, name="ingress", subnet="10.0.0.0/24", gateway="10.0.0.1", vni=4096,
                        ingress=True, node_address="10.0.0.2/24", peers=(LocalPeer("198.18.0.11", "w-1-abc"),))


@pytest.fixture
def local() -> FakeLocal:
    return FakeLocal()


@pytest.fixture
async def client(store: Store, local: FakeLocal) -> AsyncIterator[TestClient]:
    app = build_app(StoreCluster(store))
    app[LOCAL_NETWORKS] = local
    async with TestClient(TestServer(app)) as c:
        yield c


async def worker_client(local: FakeLocal, worker: bool = True) -> TestClient:
    app = build_app(StoreCluster(None, worker=worker))
    app[LOCAL_NETWORKS] = local
    return TestClient(TestServer(app))


def test_local_api_shapes() -> None:
    net = web_net("n1")
    shown = local_api(net, verbose=True, peer_names={"198.18.0.12": "node-b-0123456789ab"},
                      ports={"svc1": ["Target: 80, Publish: 8080"]})
    assert list(shown) == ["Name", "Id", "Created", "Scope", "Driver", "EnableIPv6", "IPAM", "Internal",
                           "Attachable", "Ingress", "ConfigFrom", "ConfigOnly", "Containers", "Options", "Labels",
                           "Peers", "Services"]
    assert shown["IPAM"] == {"Driver": "default", "Options": None,
                             "Config": [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]}
    assert shown["Options"] == {VXLAN: "4097"} and shown["Labels"] == {"tier": "front"}
    assert shown["Created"] == "2026-01-02T03:04:05.000000006Z"
    assert shown["Containers"] == {
        "lb-web-net": {"Name": "web-net-endpoint", "EndpointID": endpoint_id("n1", "lb-web-net@10.0.1.3"),
                       "MacAddress": "02:42:0a:00:01:03", "IPv4Address": "10.0.1.3/24", "IPv6Address": ""},
        TASK: {"Name": f"web.1.{TASK}", "EndpointID": endpoint_id("n1", TASK), "MacAddress": "02:42:0a:00:01:05",
               "IPv4Address": "10.0.1.5/24", "IPv6Address": ""},
    }
    assert list(shown["Containers"]) == sorted(shown["Containers"])       # Go sorts map keys
    assert len(endpoint_id("n1", TASK)) == 64
    assert shown["Peers"] == [{"Name": "node-a-fromnode", "IP": "127.0.0.1"},
                              {"Name": "node-b-0123456789ab", "IP": "198.18.0.12"}]
    assert shown["Services"] == {"web": {
        "VIP": "10.0.1.2", "Ports": ["Target: 80, Publish: 8080"], "LocalLBIndex": 257,
        "Tasks": [{"Name": f"web.1.{TASK}", "EndpointID": endpoint_id("n1", TASK), "EndpointIP": "10.0.1.5",
                   "Info": {"Host IP": "127.0.0.1"}},
                  {"Name": f"web.2.{REMOTE_TASK}", "EndpointID": endpoint_id("n1", REMOTE_TASK),
                   "EndpointIP": "10.0.1.6", "Info": {"Host IP": "198.18.0.12"}}]}}
    # a list entry: no Containers (API >= 1.28), no Services; an unknown peer is named by its address
    summary = local_api(net, detailed=False, verbose=True)
    assert summary["Containers"] == {} and "Services" not in summary
    assert summary["Peers"][1] == {"Name": "198.18.0.12", "IP": "198.18.0.12"}
    # the ingress network's own endpoint is its sandbox's, and an empty view omits Peers
    ingress = local_api(LocalNetwork(id="i", name="ingress", subnet="10.0.0.0/24", gateway="10.0.0.1", vni=4096,
                                     ingress=True, node_address="10.0.0.2/24"))
    assert list(ingress["Containers"]) == ["ingress-sbox"]
    assert ingress["Containers"]["ingress-sbox"]["Name"] == "ingress-endpoint"
    assert "Peers" not in ingress and ingress["Created"] == "0001-01-01T00:00:00Z"
    # on a manager the cluster object is the base: its labels, options, creation time
    base = {"Name": "web-net", "Id": "n1", "Labels": {"from": "store"}, "Containers": {}}
    merged = local_api(net, base)
    assert merged["Labels"] == {"from": "store"} and TASK in merged["Containers"]


async def test_manager_merges_the_local_view(client: TestClient, store: Store, local: FakeLocal) -> None:
    await add_node(store)          # Status.Addr 127.0.0.1: the peer of that address is node-a
    await store.update(lambda tx: tx.create(ingress_network()))
    nid = await new_network(client, "web-net", Labels={"tier": "front"})
    other = await new_network(client, "other-net")
    await allocate(store)
    predefined = Network(id=new_id(), spec={"Name": "host", "Driver": "host", "Scope": "swarm",
                                             "Labels": {"com.docker.swarm.predefined": "true"}})
    await store.update(lambda tx: tx.create(predefined))
    ports = {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}]}
    sid = await create(client, body(EndpointSpec=ports))
    local.networks = [web_net(nid, services=(LocalService("web", sid, "10.0.1.2", ()),))]

    _, listed = await call(client, "GET", "/networks", expect=200)
    assert [n["Name"] for n in listed] == ["ingress", "web-net", "other-net"]     # predefined left out
    assert all(n["Containers"] == {} and "Peers" not in n for n in listed)

    _, shown = await call(client, "GET", "/networks/web-net", expect=200)
    _, cluster = await call(client, "GET", f"/networks/{other}", expect=200)
    assert shown["Id"] == nid and shown["Labels"] == {"tier": "front"} and shown["Options"] == {VXLAN: "4097"}
    assert set(shown["Containers"]) == {TASK, "lb-web-net"}
    assert shown["Peers"] == [{"Name": f"node-a-{NODE_ID[:12]}", "IP": "127.0.0.1"},
                              {"Name": "198.18.0.12", "IP": "198.18.0.12"}]
    assert "Services" not in shown
    assert cluster["Containers"] == {} and "Peers" not in cluster                # not instantiated here
    _, verbose = await call(client, "GET", f"/networks/{nid[:6]}", expect=200, verbose="true")
    assert verbose["Services"] == {"web": {"VIP": "10.0.1.2", "Ports": ["Target: 80, Publish: 8080"],
                                           "LocalLBIndex": 257, "Tasks": []}}
    _, same = await call(client, "GET", f"/networks/{nid}", expect=200, verbose="True")       # docker-py's True
    assert same["Services"] == verbose["Services"]
    status, err = await call(client, "GET", f"/networks/{nid}", verbose="maybe")
    assert status == 400 and err["message"].startswith("invalid value for verbose")

    # scope: every network here is a swarm network (docker-py: scope='local' -> NotFound)
    assert (await call(client, "GET", "/networks/web-net", scope="swarm"))[0] == 200
    for scope in ("local", "global"):
        assert await call(client, "GET", "/networks/web-net", scope=scope) == \
            (404, {"message": "network web-net not found"})
    assert (await call(client, "GET", "/networks/host"))[0] == 200            # found by name, not listed
    assert await call(client, "GET", "/networks/nosuch") == (404, {"message": "network nosuch not found"})

    # the same name twice (a stale local view beside a new cluster network): ambiguous
    local.networks.append(web_net("0ldn3twork000000000000000a", name="other-net"))
    assert await call(client, "GET", "/networks/other-net") == \
        (400, {"message": "2 matches found based on name: network other-net is ambiguous"})
    assert (await call(client, "GET", f"/networks/{other}"))[0] == 200       # an exact ID still answers


async def test_id_prefix_ambiguity(client: TestClient, store: Store) -> None:
    for suffix in "xy":
        network = Network(id="abc" + suffix * 22, spec={"Name": f"net-{suffix}", "Driver": "overlay",
                                                        "Scope": "swarm", "Labels": {}})
        def create(tx: WriteTx, n: Network = network) -> StoreObject:
            return tx.create(n)
        await store.update(create)
    assert await call(client, "GET", "/networks/abc") == \
        (400, {"message": "2 matches found based on ID prefix: network abc is ambiguous"})
    assert await call(client, "DELETE", "/networks/abc") == \
        (400, {"message": "2 matches found based on ID prefix: network abc is ambiguous"})
    assert (await call(client, "GET", "/networks/abcx"))[1]["Name"] == "net-x"


async def test_worker_shows_what_it_instantiated(local: FakeLocal) -> None:
    local.networks = [ingress_local("ingre55000000000000000000a"), web_net("webnet00000000000000000001")]
    async with await worker_client(local) as client:
        _, listed = await call(client, "GET", "/networks", expect=200)
        assert [(n["Name"], n["Scope"], n["Driver"]) for n in listed] == \
            [("ingress", "swarm", "overlay"), ("web-net", "swarm", "overlay")]
        assert all(n["Containers"] == {} for n in listed) and listed[0]["Peers"] == [{"Name": "w-1-abc",
                                                                                       "IP": "198.18.0.11"}]
        _, named = await call(client, "GET", "/networks", filters=json.dumps({"name": ["web"]}))
        assert [n["Name"] for n in named] == ["web-net"]
        _, dangling = await call(client, "GET", "/networks", filters=json.dumps({"dangling": ["true"]}))
        assert dangling == []
        _, ingress = await call(client, "GET", "/networks/ingress", expect=200)
        assert ingress["Ingress"] is True and ingress["Options"] == {VXLAN: "4096"}
        assert ingress["Containers"]["ingress-sbox"]["IPv4Address"] == "10.0.0.2/24"
        _, shown = await call(client, "GET", "/networks/web-net", expect=200, verbose="1")
        assert shown["Labels"] == {"tier": "front"} and set(shown["Services"]) == {"web"}
        assert await call(client, "DELETE", "/networks/ingress") == (503, {"message": WORKER_NODE})
        assert await call(client, "DELETE", "/networks/nosuch") == (404, {"message": "network nosuch not found"})
        assert await call(client, "POST", "/networks/create", {"Name": "x", "Driver": "overlay"}) == \
            (503, {"message": WORKER_NODE})
        assert await call(client, "POST", "/networks/prune") == (200, {"NetworksDeleted": []})


async def test_outside_a_swarm() -> None:
    async with await worker_client(FakeLocal(), worker=False) as client:
        assert await call(client, "GET", "/networks") == (200, [])
        assert await call(client, "GET", "/networks/ingress") == (404, {"message": "network ingress not found"})
        assert await call(client, "POST", "/networks/create", {"Name": "x", "Driver": "overlay"}) == \
            (403, {"message": NOT_IN_SWARM})
        assert await call(client, "POST", "/networks/create", {"Name": "host"}) == \
            (403, {"message": "host is a pre-defined network and cannot be created"})
        assert await call(client, "POST", "/networks/prune") == (200, {"NetworksDeleted": []})


async def test_prune(client: TestClient, store: Store) -> None:
    ingress = ingress_network()
    predefined = Network(id=new_id(), spec={"Name": "host", "Driver": "host", "Scope": "swarm",
                                             "Labels": {"com.docker.swarm.predefined": "true"}})
    await store.update(lambda tx: (tx.create(ingress), tx.create(predefined)))
    for name, labels in (("used", {}), ("by-task", {}), ("keep-a", {"keep": "1"}), ("free-b", {"env": "x"}),
                         ("free-c", {})):
        await new_network(client, name, Labels=labels)
    await allocate(store)
    await create(client, body(TaskTemplate={**CLI_BODY["TaskTemplate"], "Networks": [{"Target": "used"}]}))
    by_task = store.view(lambda tx: tx.lookup("networks", "by-task"))
    await add_task(store, by_task, TaskState.RUNNING, TaskState.RUNNING)

    assert await call(client, "POST", "/networks/prune", filters=json.dumps({"bogus": ["1"]})) == \
        (400, {"message": "invalid filter 'bogus'"})
    assert await call(client, "POST", "/networks/prune", filters=json.dumps({"until": ["soon"]})) == \
        (400, {"message": 'failed to parse value as time or duration: "soon"'})
    assert await call(client, "POST", "/networks/prune", filters=json.dumps({"until": ["1h", "2h"]})) == \
        (400, {"message": "more than one until filter specified"})
    # everything was created just now: nothing is older than ten minutes
    assert await call(client, "POST", "/networks/prune", filters=json.dumps({"until": {"10m": True}})) == \
        (200, {"NetworksDeleted": []})
    assert await call(client, "POST", "/networks/prune", filters=json.dumps({"label": ["keep=1"]})) == \
        (200, {"NetworksDeleted": ["keep-a"]})
    assert await call(client, "POST", "/networks/prune", filters=json.dumps({"label!": ["env"]})) == \
        (200, {"NetworksDeleted": ["free-c"]})
    assert await call(client, "POST", "/networks/prune",
                      filters=json.dumps({"until": ["2999-01-01T00:00:00Z"]})) == (200, {"NetworksDeleted": ["free-b"]})
    # in use (by a service, by a task), ingress and predefined stay
    assert await call(client, "POST", "/networks/prune") == (200, {"NetworksDeleted": []})
    _, left = await call(client, "GET", "/networks")
    assert sorted(n["Name"] for n in left) == ["by-task", "ingress", "used"]


def test_parse_until() -> None:
    now = 1_700_000_000.0
    assert parse_until("10m", now) == now - 600
    assert parse_until("1h30m", now) == now - 5400
    assert parse_until("1.5h", now) == now - 5400
    assert parse_until("-1h", now) == now + 3600
    assert parse_until("0", now) == 0.0
    assert parse_until("1690000000", now) == 1_690_000_000.0
    assert parse_until("1690000000.5", now) == 1_690_000_000.5
    assert parse_until("2026-01-02T03:04:05Z", now) == parse_time("2026-01-02T03:04:05Z")
    assert parse_until("2026-01-02T03:04:05.123456789Z", now) == pytest.approx(
        parse_time("2026-01-02T03:04:05.123456789Z"), abs=1e-6)
    assert parse_until("2026-01-02T03:04:05+01:00", now) == parse_time("2026-01-02T02:04:05Z")
    assert parse_until("2026-01-02", now) > 0                    # a date, in local time
    for bad in ("soon", "10x", "2026-13-45", "1.2.3", ""):
        with pytest.raises(Exception, match="failed to parse value as time or duration"):
            parse_until(bad, now)
