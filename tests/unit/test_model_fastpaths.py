"""The model's fast paths give exactly what the plain code they replaced gave.

Each reference below is the straightforward implementation (strftime per call, a 14-key dict
literal, a field-by-field copy); the fast path is compared with it value for value, key order
and identity (what a copy shares with its original) included.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import random
import re
import threading
from typing import Any

import msgpack
import pytest

import model.ids
from model import Task, TaskState, TaskStatus, format_time, is_id, new_id

# --- format_time -------------------------------------------------------------------------------


def reference_format_time(seconds: float) -> str:
    whole = int(seconds // 1)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    stamp = datetime.datetime.fromtimestamp(whole, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _boundary_times() -> list[float]:
    """Instants around second, minute, hour, day, month, year and leap-day boundaries."""
    edges = [0, 59, 60, 3599, 3600, 86399, 86400, 951782400, 951868800, 1709164800, 1709251200,
             1735689599, 1735689600, 1795000000, 4102444800]  # 2000-02-29, 2024-02-29, 2025, 2100
    out: list[float] = []
    for edge in edges:
        for delta in (-1.0, -1e-9, -4e-10, -1e-6, 0.0, 1e-9, 4e-10, 5e-10, 6e-10, 0.5, 0.999999999,
                      0.9999999995, 0.9999999996):
            out.append(edge + delta)
        out.append(edge)  # an int, as a caller may pass
        out.append(math.nextafter(float(edge), -math.inf))
        out.append(math.nextafter(float(edge), math.inf))
    return out


def test_format_time_matches_strftime_at_boundaries() -> None:
    for seconds in _boundary_times():
        assert format_time(seconds) == reference_format_time(seconds), seconds


def test_format_time_matches_strftime_over_random_instants_in_any_order() -> None:
    rng = random.Random(20261128)
    base = 1795000000.0
    instants = [rng.uniform(0, 4102444800.0) for _ in range(3000)]
    # Runs within one second and across neighbouring seconds, as a busy manager formats them.
    instants += [base + i * 0.000137 for i in range(20_000)]
    instants += [base + rng.uniform(-3, 3) for _ in range(5000)]
    instants += [float(int(base) + rng.randrange(-100, 100)) + rng.choice((0.0, 0.5, 1e-9)) for _ in range(2000)]
    sequences = [instants, sorted(instants), sorted(instants, reverse=True)]
    for sequence in sequences:
        for seconds in sequence:
            expected = reference_format_time(seconds)
            assert format_time(seconds) == expected, seconds
            assert format_time(seconds) == expected, seconds  # the cached repeat
            assert expected.endswith("Z") and len(expected.split(".")[1]) == 10


def test_format_time_rounds_into_the_next_second_as_before() -> None:
    assert format_time(1795000000.9999999996) == reference_format_time(1795000000.9999999996)
    assert format_time(59.9999999996).startswith("1970-01-01T00:01:00.")
    assert format_time(86399.9999999999) == "1970-01-02T00:00:00.000000000Z"


def test_format_time_rejects_what_it_rejected() -> None:
    for bad in (math.nan, math.inf, -math.inf, 1e300, "1795000000"):
        with pytest.raises(Exception) as expected:
            reference_format_time(bad)  # type: ignore[arg-type]
        with pytest.raises(expected.type, match=f"^{re.escape(str(expected.value))}$"):
            format_time(bad)  # type: ignore[arg-type]
    assert format_time(1.25) == reference_format_time(1.25)  # a failure leaves the caches sound


def test_format_time_is_consistent_across_threads() -> None:
    rng = random.Random(7)
    instants = [1795000000 + rng.uniform(-5, 5) for _ in range(4000)]
    wrong: list[float] = []

    def work(part: list[float]) -> None:
        wrong.extend(s for s in part if format_time(s) != reference_format_time(s))

    workers = [threading.Thread(target=work, args=(instants[i::4],)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert wrong == []


# --- new_id ------------------------------------------------------------------------------------


def test_ids_keep_their_form_across_many_pool_refills() -> None:
    ids = [new_id() for _ in range(5000)]  # ~30 draws from the OS
    assert len(set(ids)) == len(ids)
    assert all(is_id(i) and len(i) == 25 and i == i.lower() for i in ids)


def test_ids_come_from_os_urandom(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []

    def counting_urandom(size: int) -> bytes:
        draws.append(size)
        return bytes([0, 35, 36, 251, 252, 255] * (size // 6 + 1))[:size]

    model.ids._id_pool.clear()
    monkeypatch.setattr(model.ids.os, "urandom", counting_urandom)
    try:
        first = new_id()
        # Bytes 252 and 255 are dropped; 0, 35, 36, 251 map to 0, z, 0, z.
        assert first == "0z0z" * 6 + "0" and draws == [model.ids._BLOCK]
    finally:
        model.ids._id_pool.clear()  # leave no predictable IDs behind


def test_ids_are_unique_across_threads() -> None:
    model.ids._id_pool.clear()
    found: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        out.extend(new_id() for _ in range(3000))

    workers = [threading.Thread(target=work, args=(found[i],)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    every = [i for part in found for i in part]
    assert len(every) == 12_000 and len(set(every)) == 12_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_never_reuses_the_parents_pooled_ids() -> None:
    new_id()  # the pool now holds IDs the parent will hand out
    pooled = set(model.ids._id_pool)
    assert pooled
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write_end, "".join(new_id() for _ in range(20)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        data = b""
        while chunk := os.read(read_end, 4096):
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(child, 0)
    child_ids = {data[i:i + 25].decode() for i in range(0, len(data), 25)}
    assert len(child_ids) == 20 and not child_ids & pooled


# --- Task.to_record ----------------------------------------------------------------------------


def reference_to_record(task: Task) -> dict[str, Any]:
    status = task.status
    return {"id": task.id, "version": task.version, "created_at": task.created_at,
            "updated_at": task.updated_at, "spec": task.spec, "service_id": task.service_id,
            "slot": task.slot, "node_id": task.node_id, "labels": task.labels,
            "status": [int(status.state), status.timestamp, status.message, status.err,
                       status.container_status, status.port_status],
            "desired_state": int(task.desired_state), "networks_attachments": task.networks_attachments,
            "job_iteration": task.job_iteration, "service_name": task.service_name,
            "endpoint": task.endpoint}


def _full_task() -> Task:
    return Task(id=new_id(), version=4, created_at="c", updated_at="u", spec={"A": {"B": [1]}},
                service_id="s", slot=2, node_id="n", labels={"l": "v"},
                status=TaskStatus(TaskState.RUNNING, "ts", "m", "e", {"PID": 1}, {"Ports": [{"P": 80}]}),
                desired_state=TaskState.SHUTDOWN,
                networks_attachments=[{"Network": {"ID": "x"}, "Addresses": ["10.0.0.2/24"]}],
                job_iteration={"Index": 1}, service_name="web",
                endpoint={"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                                     "PublishMode": "host"}]})


def _tasks_in_every_making() -> list[Task]:
    full = _full_task()
    plain = Task(id=new_id())
    return [full, plain, full.copy(), plain.copy(), full.copy().copy(), Task.from_record(full.to_record()),
            Task.from_record(plain.to_record()), copy.deepcopy(full)]


def _assert_same_record(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got == expected
    assert list(got) == list(expected)  # key order, so the msgpack bytes are the same too
    assert msgpack.packb(got, use_bin_type=True) == msgpack.packb(expected, use_bin_type=True)
    assert type(got["status"][0]) is int and type(got["desired_state"]) is int
    for key in expected:
        if key != "status":
            assert got[key] is expected[key] or key == "desired_state", key  # shared, as before


def test_task_record_is_the_spelled_out_record() -> None:
    for task in _tasks_in_every_making():
        _assert_same_record(task.to_record(), reference_to_record(task))


def test_task_record_after_edits_and_state_moves() -> None:
    task = _full_task().copy()
    task.status.advance(TaskState.FAILED, "t2", "boom", err="exit 1")
    task.version, task.node_id, task.labels = 9, "other", {"k": "v"}
    task.set_desired_state(TaskState.REMOVE)
    _assert_same_record(task.to_record(), reference_to_record(task))


def test_task_record_of_an_unusual_task_falls_back_to_the_spelled_out_record() -> None:
    extra = _full_task()
    extra.__dict__["scratch"] = 1  # an attribute that is not a field: never recorded
    _assert_same_record(extra.to_record(), reference_to_record(extra))
    plain_int = _full_task()
    plain_int.status.state = 999  # type: ignore[assignment]  # not a member: int() as before
    plain_int.desired_state = 512  # type: ignore[assignment]
    _assert_same_record(plain_int.to_record(), reference_to_record(plain_int))
    assert plain_int.to_record()["status"][0] == 999


def test_record_returned_is_a_new_dict_each_time() -> None:
    task = _full_task()
    first = task.to_record()
    first["version"] = 77
    first["added"] = True
    assert task.version == 4 and "added" not in task.to_record() and "added" not in task.__dict__


# --- Task.copy ---------------------------------------------------------------------------------


def reference_copy(task: Task) -> Task:
    twin = object.__new__(type(task))
    twin.__dict__.update(task.__dict__)
    status = task.status
    twin.status = TaskStatus(status.state, status.timestamp, status.message, status.err,
                             status.container_status, status.port_status)
    twin.labels = dict(task.labels)
    twin.networks_attachments = copy.deepcopy(task.networks_attachments) if task.networks_attachments else []
    if task.job_iteration is not None:
        twin.job_iteration = copy.deepcopy(task.job_iteration)
    return twin


def _sharing(original: Task, twin: Task) -> dict[str, bool]:
    """Which values a copy shares (is) with its original."""
    out = {name: getattr(twin, name) is getattr(original, name) for name in original.__dict__}
    for name in TaskStatus.__slots__:
        out["status." + name] = getattr(twin.status, name) is getattr(original.status, name)
    return out


def test_copy_equals_and_shares_exactly_what_the_reference_copy_does() -> None:
    for task in _tasks_in_every_making():
        twin, expected = task.copy(), reference_copy(task)
        assert twin == expected == task and type(twin) is type(task)
        assert list(twin.__dict__) == list(expected.__dict__)
        assert _sharing(task, twin) == _sharing(task, expected)
        assert twin.status is not task.status and twin.labels is not task.labels
        assert twin.networks_attachments is not task.networks_attachments
        assert twin.spec is task.spec  # read-only, shared


def test_mutating_a_copy_never_reaches_the_original() -> None:
    for task in _tasks_in_every_making():
        before = copy.deepcopy(task)
        twin = task.copy()
        twin.labels["new"] = "label"
        twin.networks_attachments.append({"Network": {"ID": "y"}})
        if task.networks_attachments:
            twin.networks_attachments[0]["Network"]["ID"] = "changed"
            twin.networks_attachments[0]["Addresses"].append("10.0.0.3/24")
        if twin.job_iteration is not None:
            twin.job_iteration["Index"] = 99
        twin.status.advance(TaskState.REMOVE, "later", "moved", err="x", container_status={"PID": 2})
        twin.set_desired_state(TaskState.ORPHANED)
        twin.version += 1
        twin.node_id = "elsewhere"
        assert task == before
        assert task.to_record() == reference_to_record(before)


def test_mutating_the_original_never_reaches_a_copy() -> None:
    task = _full_task()
    twin = task.copy()
    snapshot = copy.deepcopy(twin)
    task.labels.clear()
    task.networks_attachments[0]["Addresses"].clear()
    assert task.job_iteration is not None
    task.job_iteration["Index"] = 5
    task.status.advance(TaskState.FAILED, "t9")
    assert twin == snapshot


# --- TaskState ---------------------------------------------------------------------------------


def test_task_state_names_and_terminality_per_member() -> None:
    for state in TaskState:
        assert state.api == state.name.lower()
        assert state.is_terminal == (state > TaskState.RUNNING)
        assert TaskState.from_api(state.api) is state
    assert len(TaskState) == 14 and "api" not in TaskState.__members__
