"""Secrets and configs from the store to a task's files: the dispatcher sends a secret's data
only with the tasks that refer to it and only to their node; the agent's Dependencies keep it
for exactly as long as a task needs it and resolve references into files (targets, defaults,
`..` refused); a task whose data is missing is rejected, naming what is missing; the bundle
binds the files read-only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from manager.dispatcher import Dispatcher
from manager.store import Store
from model import Config, Secret, Task, TaskState, new_id
from tests.support.fake_executor import FakeController, FakeExecutor
from tests.support.session_env import session_env
from tests.support.wait import async_wait_until
from tests.unit.test_dispatcher_fanout import changes_of, next_message, open_session, two_nodes
from worker.agent.dependencies import Dependencies, MissingDependency
from worker.agent.task_runner import TaskRunner
from worker.executor.bundle import HostPaths, build_spec
from worker.executor.controller import ExecutorError
from worker.executor.spec import ConfigError, ContainerConfig, InjectedFile, MountSpec, ResolvedUser
from worker.executor.task_executor import RuncTaskExecutor


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_ref(obj: Secret, file: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"SecretID": obj.id, "SecretName": obj.spec["Name"],
            "File": file if file is not None else {"Name": obj.spec["Name"], "UID": "0", "GID": "0", "Mode": 292}}


def config_ref(obj: Config, file: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ConfigID": obj.id, "ConfigName": obj.spec["Name"],
            "File": file if file is not None else {"Name": obj.spec["Name"]}}


def make_secret(name: str, text: str) -> Secret:
    return Secret(id=new_id(), spec={"Name": name, "Labels": {}, "Data": b64(text)})


def make_config(name: str, text: str) -> Config:
    return Config(id=new_id(), spec={"Name": name, "Labels": {}, "Data": b64(text)})


def task_on(node_id: str, secrets: list[dict[str, Any]] = (), configs: list[dict[str, Any]] = (),  # type: ignore[assignment]
            desired: TaskState = TaskState.RUNNING) -> Task:
    container: dict[str, Any] = {"Image": "busybox"}
    if secrets:
        container["Secrets"] = list(secrets)
    if configs:
        container["Configs"] = list(configs)
    task = Task(id=new_id(), service_id="svc", slot=1, node_id=node_id, desired_state=desired,
                spec={"ContainerSpec": container}, service_name="web")
    task.status.advance(TaskState.ASSIGNED, "", "assigned")
    return task


# ---- dispatcher ----------------------------------------------------------------------------------

async def complete_set_messages(dispatcher: Dispatcher, node_id: str) -> tuple[Any, list[dict[str, Any]]]:
    """Open a session; its complete-set messages (not just their tasks)."""
    stream = dispatcher.session(node_id, {"description": {"Hostname": "h"}, "addr": "127.0.0.1"})
    assert (await next_message(stream))["kind"] == "session"
    messages = []
    while True:
        message = await next_message(stream)
        if message["kind"] == "assignments":
            messages.append(message)
        elif message["kind"] == "node":
            return stream, messages


async def test_complete_set_carries_only_the_referenced_data_and_only_to_the_tasks_node() -> None:
    store = Store()
    a, b = await two_nodes(store)
    used, unused = make_secret("db-password", "hunter2"), make_secret("other", "nope")
    conf = make_config("app.conf", "x=1")
    on_a = task_on(a, secrets=[secret_ref(used)], configs=[config_ref(conf)])
    plain_b = task_on(b)
    stopping_b = task_on(b, secrets=[secret_ref(unused)], desired=TaskState.SHUTDOWN)
    await store.update(lambda tx: [tx.create(o) for o in (used, unused, conf, on_a, plain_b, stopping_b)])
    dispatcher = Dispatcher(store)
    stream_a, messages_a = await complete_set_messages(dispatcher, a)
    stream_b, messages_b = await complete_set_messages(dispatcher, b)
    async with contextlib.aclosing(stream_a), contextlib.aclosing(stream_b):
        assert len(messages_a) == 1
        assert messages_a[0]["secrets"] == {used.id: b64("hunter2")}
        assert messages_a[0]["configs"] == {conf.id: b64("x=1")}
        # B runs no task that may still start with a secret: it gets none (not even the key).
        assert {t["id"] for t in messages_b[0]["tasks"]} == {plain_b.id, stopping_b.id}
        assert "secrets" not in messages_b[0] and "configs" not in messages_b[0]


async def test_incremental_updates_carry_data_of_their_own_tasks_only() -> None:
    store = Store()
    a, b = await two_nodes(store)
    s1, s2 = make_secret("s1", "one"), make_secret("s2", "two")
    await store.update(lambda tx: [tx.create(s1), tx.create(s2)])
    dispatcher = Dispatcher(store)
    stream_a, _ = await open_session(dispatcher, a)
    stream_b, _ = await open_session(dispatcher, b)
    async with contextlib.aclosing(stream_a), contextlib.aclosing(stream_b):  # type: ignore[type-var]
        plain = task_on(a)
        await store.update(lambda tx: tx.create(plain))
        message = await next_message(stream_a)
        assert changes_of(message) == [("update", plain.id)]
        assert "secrets" not in message and "configs" not in message

        with_s2 = task_on(b, secrets=[secret_ref(s2, {})])   # File fields left to their defaults
        await store.update(lambda tx: tx.create(with_s2))
        message = await next_message(stream_b)
        assert changes_of(message) == [("update", with_s2.id)]
        assert message["secrets"] == {s2.id: b64("two")} and "configs" not in message

        # A's next message is about its own new task and brings s1 alone: s2 never reached A.
        # (A job's task, desired COMPLETE, still runs: it gets its data too.)
        with_s1 = task_on(a, secrets=[secret_ref(s1)], desired=TaskState.COMPLETE)
        await store.update(lambda tx: tx.create(with_s1))
        message = await next_message(stream_a)
        assert changes_of(message) == [("update", with_s1.id)]
        assert message["secrets"] == {s1.id: b64("one")}


# ---- Dependencies: holding and resolving ----------------------------------------------------------

def test_files_follow_the_targets_and_defaults_of_swarm() -> None:
    deps = Dependencies()
    s, c, abs_c = make_secret("db", "pw"), make_config("app.conf", "x=1"), make_config("nginx", "conf")
    deps.add({s.id: s.spec["Data"]}, {c.id: c.spec["Data"], abs_c.id: abs_c.spec["Data"]})
    task = task_on("n", secrets=[secret_ref(s, {"Name": "db", "UID": "1000", "GID": "50", "Mode": 0o400}),
                                 secret_ref(s, {"Name": "/etc/db-copy"})],
                   configs=[config_ref(c, {"Name": "app.conf"}), config_ref(abs_c, {"Name": "/etc/nginx/nginx.conf"}),
                            {"ConfigID": c.id, "ConfigName": "app.conf", "Runtime": {}}])
    files = deps.files_for(task)
    assert files == [
        InjectedFile("/run/secrets/db", b"pw", 1000, 50, 0o400, "secret db"),
        InjectedFile("/etc/db-copy", b"pw", 0, 0, 0o444, "secret db"),
        InjectedFile("/app.conf", b"x=1", 0, 0, 0o444, "config app.conf"),
        InjectedFile("/etc/nginx/nginx.conf", b"conf", 0, 0, 0o444, "config nginx"),
    ]
    # No File at all: named after the secret, with the defaults.
    bare = task_on("n", secrets=[{"SecretID": s.id, "SecretName": "db"}])
    assert deps.files_for(bare) == [InjectedFile("/run/secrets/db", b"pw", 0, 0, 0o444, "secret db")]


def test_a_missing_secret_and_bad_targets_are_named() -> None:
    deps = Dependencies()
    s = make_secret("db", "pw")
    with pytest.raises(MissingDependency, match=re.escape(f"secret db (ID {s.id}) is not available on this node")):
        deps.files_for(task_on("n", secrets=[secret_ref(s)]))
    deps.add({s.id: s.spec["Data"]}, None)
    for name in ("../etc/shadow", "/run/secrets/../../etc/passwd", "a/../../b"):
        with pytest.raises(ConfigError, match=re.escape("must not contain '..'")):
            deps.files_for(task_on("n", secrets=[secret_ref(s, {"Name": name})]))
    with pytest.raises(ConfigError, match=re.escape("File.UID must be a numeric ID")):
        deps.files_for(task_on("n", secrets=[secret_ref(s, {"Name": "db", "UID": "root"})]))
    with pytest.raises(ConfigError, match=re.escape("File.Mode")):
        deps.files_for(task_on("n", secrets=[secret_ref(s, {"Name": "db", "Mode": 0o17777})]))


def test_data_is_released_with_the_last_task_and_pruned_by_a_complete_set() -> None:
    deps = Dependencies()
    s1, s2 = make_secret("s1", "one"), make_secret("s2", "two")
    t1, t2 = task_on("n", secrets=[secret_ref(s1)]), task_on("n", secrets=[secret_ref(s1), secret_ref(s2)])
    deps.add({s1.id: s1.spec["Data"], s2.id: s2.spec["Data"]}, None)
    deps.bind(t1)
    deps.bind(t2)
    deps.bind(t2)   # a resent assignment binds nothing twice
    deps.release(t2.id)
    assert deps.held() == {("secret", s1.id)}          # s2 had no other user
    deps.release(t2.id)
    assert deps.get("secret", s1.id) == b"one"        # t1 still needs s1
    deps.release(t1.id)
    assert deps.held() == set()

    deps.add({s1.id: s1.spec["Data"], s2.id: s2.spec["Data"]}, None)   # e.g. before a reconnect
    deps.begin_complete_set()
    deps.add({s2.id: s2.spec["Data"]}, None)          # chunk 1
    deps.begin_complete_set()                         # chunk 2 (no data)
    deps.end_complete_set()
    assert deps.held() == {("secret", s2.id)}
    problems = deps.add({"x": "not base64!"}, None)
    assert len(problems) == 1 and problems[0].startswith("secret x: data is not base64")
    assert deps.held() == {("secret", s2.id)}


async def test_the_executor_rejects_a_task_whose_secret_is_missing_before_pulling() -> None:
    s = make_secret("db-password", "pw")
    task = task_on("n", secrets=[secret_ref(s)])
    executor = RuncTaskExecutor(NoContainers(), None, dependencies=Dependencies())  # type: ignore[arg-type]
    with pytest.raises(ExecutorError, match=r"task: secret db-password \(ID \w+\) is not available on this node"):
        await executor.controller(task, lambda _: None)
    reports: list[tuple[str, Any]] = []
    runner = TaskRunner(task, executor, lambda tid, st: reports.append((tid, st)))
    runner_task = asyncio.create_task(runner.run())
    try:
        await async_wait_until(_returns(lambda: runner.status.state == TaskState.REJECTED), what="rejected")
    finally:
        runner_task.cancel()
        await asyncio.gather(runner_task, return_exceptions=True)
    assert runner.status.message == "preparing failed"
    assert runner.status.err == f"task: secret db-password (ID {s.id}) is not available on this node"


class NoContainers:
    """An executor without containers (the image store is never reached in this test)."""

    def get(self, cid: str) -> None:
        return None


def _returns(check: Callable[[], bool]) -> Callable[[], Any]:
    async def wrapped() -> bool:
        return check()
    return wrapped


# ---- the agent, over a real dispatcher session ----------------------------------------------------

class FilesExecutor(FakeExecutor):
    """A fake executor that resolves the task's files from the agent's Dependencies, as the
    real one does, and records them."""

    def __init__(self) -> None:
        super().__init__()
        self.dependencies = Dependencies()
        self.files: dict[str, list[InjectedFile]] = {}

    async def controller(self, task: Task, progress: Callable[[str], None]) -> FakeController:
        try:
            self.files[task.id] = self.dependencies.files_for(task)
        except ConfigError as e:
            raise ExecutorError(f"task: {e}") from e
        return await super().controller(task, progress)


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    executor = FilesExecutor()
    async with session_env(tmp_path, executor, dependencies=executor.dependencies) as e:
        yield {"store": e.store, "node": e.node, "executor": executor, "agent": e.agent}


async def wait_state(store: Store, task_id: str, state: TaskState) -> Task:
    async def check() -> bool:
        return bool(store.view(lambda tx: tx.get("tasks", task_id)).status.state == state)

    await async_wait_until(check, what=f"task {task_id} {state.api}")
    return store.view(lambda tx: tx.get("tasks", task_id))


async def test_agent_gets_the_data_with_the_task_and_drops_it_when_the_task_is_removed(
        session: dict[str, Any]) -> None:
    store, node_id, executor = session["store"], session["node"], session["executor"]
    s, c = make_secret("token", "s3cret"), make_config("app.conf", "x=1")
    task = task_on(node_id, secrets=[secret_ref(s, {"Name": "token", "Mode": 0o400})],
                   configs=[config_ref(c)])
    await store.update(lambda tx: [tx.create(s), tx.create(c), tx.create(task)])
    await wait_state(store, task.id, TaskState.RUNNING)
    assert executor.files[task.id] == [InjectedFile("/run/secrets/token", b"s3cret", 0, 0, 0o400, "secret token"),
                                       InjectedFile("/app.conf", b"x=1", 0, 0, 0o444, "config app.conf")]
    assert executor.dependencies.held() == {("secret", s.id), ("config", c.id)}

    # A secret deleted from the store before its task reached the node: the task is rejected.
    gone = make_secret("gone", "x")
    orphan = task_on(node_id, secrets=[secret_ref(gone)])
    await store.update(lambda tx: tx.create(orphan))
    rejected = await wait_state(store, orphan.id, TaskState.REJECTED)
    assert f"secret gone (ID {gone.id}) is not available on this node" in rejected.status.err

    await store.update(lambda tx: tx.delete("tasks", task.id))

    async def released() -> bool:
        return executor.dependencies.held() == set()

    await async_wait_until(released, what="the secret and config to be dropped with their task")


# ---- the bundle ----------------------------------------------------------------------------------

def test_bundle_binds_injected_files_read_only_after_the_users_mounts() -> None:
    config = ContainerConfig(id="c1", name="c1", lower_dirs=[Path("/l")], args=["true"],
                             mounts=[MountSpec(type="tmpfs", target="/run")],
                             files=[InjectedFile("/run/secrets/db", b"pw")])
    spec = build_spec(config, ResolvedUser(0, 0, [], "/"), HostPaths(
        rootfs="/r", cgroups_path="/shoal/x/c1", injected_files={"/run/secrets/db": "/state/c1/files/0"}))
    destinations = [m["destination"] for m in spec["mounts"]]
    assert destinations.index("/run") < destinations.index("/run/secrets/db")
    bind = spec["mounts"][destinations.index("/run/secrets/db")]
    assert bind["source"] == "/state/c1/files/0" and bind["type"] == "bind"
    assert "ro" in bind["options"] and "rw" not in bind["options"]
    assert ContainerConfig.from_json(config.to_json()) == config
