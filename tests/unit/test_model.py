"""The object model: IDs, times, the task state table, API shapes and record round trips."""

import dataclasses
from collections import Counter
from typing import Any

import pytest

from model import (
    Cluster,
    Config,
    IllegalTransition,
    Network,
    Node,
    Secret,
    Service,
    Task,
    TaskState,
    TaskStatus,
    format_time,
    is_id,
    new_id,
    parse_time,
)


def test_ids_are_25_base36_unique_and_use_every_digit_evenly() -> None:
    ids = {new_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    assert all(is_id(i) for i in ids)
    assert not is_id("ABC") and not is_id("a" * 24) and not is_id("A" * 25)
    counts = Counter("".join(ids))
    assert set(counts) == set("0123456789abcdefghijklmnopqrstuvwxyz")
    expected = 20_000 * 25 / 36  # ~13,900 each; a biased digit would be off by ~1/8
    assert all(abs(n - expected) < 0.06 * expected for n in counts.values()), counts


def test_time_round_trip() -> None:
    text = format_time(1795000000.123456789)
    assert text.startswith("2026-") and text.endswith("Z") and len(text.split(".")[1]) == 10
    assert abs(parse_time(text) - 1795000000.123456789) < 1e-6
    assert parse_time("2026-11-28T03:05:47Z") == parse_time("2026-11-28T04:05:47+01:00")
    with pytest.raises(ValueError, match="invalid time"):
        parse_time("yesterday")


def test_task_states_are_ordered_and_named() -> None:
    order = ["new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running",
             "complete", "shutdown", "failed", "rejected", "remove", "orphaned"]
    assert [s.api for s in sorted(TaskState)] == order
    assert TaskState.from_api("running") is TaskState.RUNNING
    assert TaskState.FAILED.is_terminal and not TaskState.RUNNING.is_terminal
    with pytest.raises(ValueError, match="unknown task state"):
        TaskState.from_api("sleepy")


def test_backwards_status_move_raises_and_changes_nothing() -> None:
    status = TaskStatus()
    status.advance(TaskState.RUNNING, "t1", "started")
    with pytest.raises(IllegalTransition, match="from running back to preparing"):
        status.advance(TaskState.PREPARING, "t2", "oops")
    assert (status.state, status.timestamp, status.message) == (TaskState.RUNNING, "t1", "started")
    status.advance(TaskState.RUNNING, "t3", "still")  # idempotent re-report
    status.advance(TaskState.FAILED, "t4", "", err="exit 1", container_status={"ExitCode": 1})
    assert status.to_api()["Err"] == "exit 1" and status.to_api()["ContainerStatus"] == {"ExitCode": 1}


def test_desired_state_only_increases() -> None:
    task = Task(id=new_id(), desired_state=TaskState.READY)
    task.set_desired_state(TaskState.RUNNING)
    task.set_desired_state(TaskState.SHUTDOWN)
    with pytest.raises(IllegalTransition):
        task.set_desired_state(TaskState.RUNNING)
    assert task.desired_state is TaskState.SHUTDOWN


SPEC: dict[str, Any] = {"Name": "web", "Labels": {}, "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest"},
        "ForceUpdate": 0}, "Mode": {"Replicated": {"Replicas": 2}}, "EndpointSpec": {"Mode": "vip"}}


def test_records_round_trip_every_type() -> None:
    objs = [
        Cluster(id=new_id(), spec={"Name": "default"}, join_tokens={"Worker": "w", "Manager": "m"}),
        Node(id=new_id(), spec={"Role": "worker", "Availability": "active", "Labels": {}},
             description={"Hostname": "h1"}, status={"State": "ready", "Message": "", "Addr": "1.2.3.4"}),
        Service(id=new_id(), spec=SPEC, previous_spec=None, update_status={"State": "completed"}),
        Task(id=new_id(), spec=SPEC["TaskTemplate"], service_id="s", slot=3, node_id="n",
             status=TaskStatus(TaskState.RUNNING, "ts", "started"), desired_state=TaskState.RUNNING),
        Network(id=new_id(), spec={"Name": "net", "Driver": "overlay"}),
        Secret(id=new_id(), spec={"Name": "s", "Data": "aGk="}),
        Config(id=new_id(), spec={"Name": "c", "Data": "aGk="}),
    ]
    for obj in objs:
        again = type(obj).from_record(obj.to_record())
        assert again == obj
        assert again.to_api() == obj.to_api()


def test_api_shapes() -> None:
    svc = Service(id="s" * 25, version=7, created_at="c", updated_at="u", spec=SPEC)
    api = svc.to_api()
    assert api["ID"] == "s" * 25 and api["Version"] == {"Index": 7} and api["Spec"] is SPEC
    assert "PreviousSpec" not in api and "UpdateStatus" not in api
    assert svc.mode == "replicated" and svc.replicas == 2
    task = Task(id="t" * 25, spec=SPEC["TaskTemplate"], service_id=svc.id, slot=0, node_id="n1",
                status=TaskStatus(TaskState.PENDING, "ts", "pending task scheduling"))
    tapi = task.to_api()
    assert "Slot" not in tapi and tapi["DesiredState"] == "running" and tapi["Status"]["State"] == "pending"
    assert Secret(id="x", spec={"Name": "s", "Data": "aGk="}).to_api()["Spec"] == {"Name": "s"}
    assert Config(id="x", spec={"Name": "c", "Data": "aGk="}).to_api()["Spec"]["Data"] == "aGk="
    net = Network(id="n" * 25, created_at="c", spec={"Name": "backend", "Driver": "overlay"}).to_api()
    assert net["Id"] == "n" * 25 and net["Created"] == "c" and net["Scope"] == "swarm"
    cluster = Cluster(id="c", spec={"Name": "default"}).to_api(include_join_tokens=False)
    assert "JoinTokens" not in cluster and cluster["DefaultAddrPool"] == ["10.0.0.0/8"]
    node = Node(id="n", spec={"Role": "manager"}, description={"Hostname": "h"},
                manager_status={"Leader": True})
    assert node.name == "h" and node.to_api()["ManagerStatus"] == {"Leader": True}


def test_task_copy_shares_spec_but_not_status() -> None:
    task = Task(id="t", spec={"ContainerSpec": {"Image": "x"}})
    dup = task.copy()
    dup.status.advance(TaskState.PENDING, "ts")
    assert task.status.state is TaskState.NEW and dup.spec is task.spec


def test_records_hold_every_field_and_task_copy_every_value() -> None:
    for cls in (Cluster, Node, Service, Task, Network, Secret, Config):
        obj = cls(id=new_id())
        assert set(obj.to_record()) == {f.name for f in dataclasses.fields(obj)}, cls.__name__
    task = Task(id=new_id(), version=4, created_at="c", updated_at="u", spec={"A": 1}, service_id="s", slot=2,
                node_id="n", labels={"l": "v"}, status=TaskStatus(TaskState.RUNNING, "ts", "m", "e", {"PID": 1}),
                desired_state=TaskState.SHUTDOWN, networks_attachments=[{"Addresses": ["10.0.0.2/24"]}],
                job_iteration={"Index": 1}, service_name="web")
    dup = task.copy()
    assert dup == task and type(dup) is Task
    assert dup.status is not task.status and dup.labels is not task.labels
    assert dup.networks_attachments is not task.networks_attachments and dup.job_iteration is not task.job_iteration
    again = Task.from_record(task.to_record())
    assert again == task and again.status.state is TaskState.RUNNING and again.desired_state is TaskState.SHUTDOWN
    bad = task.to_record()
    bad["status"] = [7, "", "", "", None, None]
    with pytest.raises(ValueError, match="unknown task state 7"):
        Task.from_record(bad)
