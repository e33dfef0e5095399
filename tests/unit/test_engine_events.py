"""`GET /events` without a daemon: the message shape, dockerd's event filters, the bus (history,
lagging subscribers dropped) and the store changes turned into swarm events."""

from __future__ import annotations

from engineapi.events import QUEUE_LIMIT, EventBus, include, message
from engineapi.filters import parse_filters
from manager.store import Event
from model import Node, Secret, Service


def test_container_messages_carry_the_legacy_fields() -> None:
    msg = message("container", "start", "c1", {"name": "web.1.c1", "image": "busybox"}, at=12.5)
    assert msg["status"] == "start" and msg["id"] == "c1" and msg["from"] == "busybox"
    assert (msg["time"], msg["timeNano"], msg["scope"]) == (12, 12_500_000_000, "local")
    swarm = message("service", "create", "s1", {"name": "web"}, scope="swarm")
    assert "status" not in swarm and swarm["Actor"] == {"ID": "s1", "Attributes": {"name": "web"}}


def test_filters_as_dockerd_reads_them() -> None:
    start = message("container", "start", "c1abc", {"name": "web.1.c1abc", "image": "busybox", "a": "b"})
    exec_create = message("container", "exec_create: sh -c x", "c1abc", {"name": "web.1.c1abc"})
    service = message("service", "update", "s1", {"name": "web"}, scope="swarm")

    def shown(raw: str) -> list[str]:
        return [m["Action"] for m in (start, exec_create, service) if include(parse_filters(raw), m)]

    assert shown('{"type":["container"]}') == ["start", "exec_create: sh -c x"]
    assert shown('{"event":["exec_create"]}') == ["exec_create: sh -c x"]       # dockerd's fuzzy match
    assert shown('{"event":["start","update"]}') == ["start", "update"]
    assert shown('{"container":["web.1"]}') == ["start", "exec_create: sh -c x"]
    assert shown('{"service":["web"]}') == ["update"] and shown('{"scope":["swarm"]}') == ["update"]
    assert shown('{"label":["a=b"]}') == ["start"] and shown('{"image":["busybox"]}') == ["start"]


async def test_the_bus_replays_its_history_and_drops_a_subscriber_that_lags() -> None:
    bus = EventBus()
    bus.publish(message("container", "create", "c1", {}))
    history, sub = bus.subscribe()
    assert [m["Action"] for m in history] == ["create"]
    bus.publish(message("container", "start", "c1", {}))
    got = await sub.next()
    assert got is not None and got["Action"] == "start"
    for _ in range(QUEUE_LIMIT + 1):
        bus.publish(message("container", "exec_create: x", "c1", {}))
    assert await sub.next() is None and sub.dropped
    sub.close()
    bus.publish(message("container", "die", "c1", {}))      # nobody listening: only the history


def test_store_changes_become_swarm_events() -> None:
    from manager.api.swarm_events import to_message

    def service(replicas: int, image: str, state: str | None = None) -> Service:
        spec = {"Name": "web", "Mode": {"Replicated": {"Replicas": replicas}},
                "TaskTemplate": {"ContainerSpec": {"Image": image}}}
        svc = Service(id="s1", spec=spec, updated_at="2026-12-07T00:00:01.5Z")
        if state is not None:
            svc.update_status = {"State": state}
        return svc

    created = to_message(Event("create", "services", service(1, "a")))
    assert created is not None and created["Action"] == "create" and created["Type"] == "service"
    assert created["Actor"] == {"ID": "s1", "Attributes": {"name": "web"}} and created["scope"] == "swarm"
    assert created["timeNano"] % 10**9 == 500_000_000
    scaled = to_message(Event("update", "services", service(3, "b", "updating"), old=service(1, "a")))
    assert scaled is not None and scaled["Actor"]["Attributes"] == {
        "name": "web", "replicas.old": "1", "replicas.new": "3", "image.old": "a", "image.new": "b",
        "updatestate.new": "updating"}

    def node(availability: str, state: str) -> Node:
        return Node(id="n1", spec={"Role": "worker", "Availability": availability},
                    description={"Hostname": "worker-1"}, status={"State": state})

    drained = to_message(Event("update", "nodes", node("drain", "ready"), old=node("active", "ready")))
    assert drained is not None and drained["Actor"]["Attributes"] == {
        "name": "worker-1", "availability.old": "active", "availability.new": "drain"}
    removed = to_message(Event("delete", "secrets", Secret(id="x1", spec={"Name": "pw"})))
    assert removed is not None and (removed["Type"], removed["Action"]) == ("secret", "remove")
    assert to_message(Event("update", "tasks", Secret(id="t1"))) is None
