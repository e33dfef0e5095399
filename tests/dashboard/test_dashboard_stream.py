"""The dashboard's document (state.py) and its server-sent event stream (app.py), in process on
an in-memory store: what the page is sent at once, and again after a commit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from manager.dashboard import dashboard_app, dashboard_state
from manager.store import Store
from model import Node, Service, Task, TaskState

TEMPLATE = {"ContainerSpec": {"Image": "busybox:latest@sha256:abc"}}


def make_task(task_id: str, slot: int, node: str, state: TaskState, spec: dict[str, Any] | None = None,
              desired: TaskState = TaskState.RUNNING, stamp: str = "2026-12-07T01:00:00Z") -> Task:
    t = Task(id=task_id, service_id="s1", slot=slot, node_id=node, service_name="web",
             spec=spec if spec is not None else TEMPLATE, desired_state=desired)
    t.status.state = state
    t.status.timestamp = stamp
    return t


async def filled_store() -> Store:
    store = Store()

    def fill(tx: Any) -> None:
        tx.create(Node(id="w1", spec={"Role": "worker", "Availability": "active"},
                       description={"Hostname": "worker-1"}, status={"State": "ready"}))
        tx.create(Node(id="m1", spec={"Role": "manager", "Availability": "active"},
                       description={"Hostname": "manager-1"}, status={"State": "ready"}))
        tx.create(Service(id="s1", spec={"Name": "web", "Mode": {"Replicated": {"Replicas": 3}},
                                         "TaskTemplate": TEMPLATE}))
        tx.create(make_task("t1", 1, "m1", TaskState.RUNNING, stamp="2026-12-07T01:00:01Z"))
        tx.create(make_task("t2", 2, "w1", TaskState.STARTING, spec={"ContainerSpec": {"Image": "old"}}))
        tx.create(make_task("t0", 2, "w1", TaskState.SHUTDOWN, desired=TaskState.SHUTDOWN,
                            stamp="2026-12-07T01:00:02Z"))

    await store.update(fill)
    return store


async def test_the_document_has_nodes_as_columns_services_and_recent_events() -> None:
    store = await filled_store()
    service = store.view(lambda tx: tx.get("services", "s1")).copy()
    service.update_status = {"State": "updating", "Message": "update in progress"}
    await store.update(lambda tx: tx.update(service))
    doc = store.view(lambda tx: dashboard_state(tx, leader_id="m1"))
    assert [(n["hostname"], n["role"], n["leader"]) for n in doc["nodes"]] == [
        ("manager-1", "manager", True), ("worker-1", "worker", False)]
    assert sorted((t["name"], t["node"], t["state"]) for t in doc["tasks"]) == [
        ("web.1", "m1", "running"), ("web.2", "w1", "starting")]       # finished tasks are history only
    [web] = doc["services"]
    assert (web["name"], web["running"], web["desired"], web["image"]) == ("web", 1, 3, "busybox:latest")
    assert web["update"] == {"state": "updating", "message": "update in progress", "updated": 1, "total": 2}
    texts = [e["text"] for e in doc["events"]]
    assert texts.index("task web.2 shutdown on worker-1") < texts.index("task web.1 running on manager-1")


async def next_state(resp: Any) -> dict[str, Any]:
    """The next `state` event of a server-sent event stream."""
    event = ""
    async with asyncio.timeout(5):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "state":
                return dict(json.loads(line[6:]))


async def test_the_stream_sends_the_state_then_follows_each_commit() -> None:
    store = await filled_store()
    async with TestClient(TestServer(dashboard_app(lambda: store, lambda: "m1"))) as client:
        page = await client.get("/")
        assert page.status == 200 and "static/dashboard.js" in await page.text()
        script = await client.get("/static/dashboard.js")
        assert script.status == 200 and "EventSource" in await script.text()
        resp = await client.get("/events")
        assert resp.headers["Content-Type"] == "text/event-stream"
        first = await next_state(resp)
        assert first["manager"] is True and len(first["tasks"]) == 2
        await store.update(lambda tx: tx.create(make_task("t3", 3, "w1", TaskState.PENDING)))
        second = await next_state(resp)
        assert sorted(t["name"] for t in second["tasks"]) == ["web.1", "web.2", "web.3"]
        resp.close()


async def test_a_node_that_is_not_a_manager_says_so() -> None:
    async with TestClient(TestServer(dashboard_app(lambda: None))) as client:
        resp = await client.get("/events")
        assert await next_state(resp) == {"manager": False}
        resp.close()
