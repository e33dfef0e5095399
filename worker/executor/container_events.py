"""Container events of task containers (`docker events`: create, start, oom, die, stop, destroy).

`EventfulTaskExecutor` wraps another TaskExecutor's controllers: each step goes through
unchanged and, once it has done something, publishes the event dockerd would (create after a
prepare that made the container, start after a start that started it, die with the exit code
once the container is seen to exit, preceded by oom when the kernel OOM-killed in its cgroup,
stop after a shutdown that stopped it, destroy after a remove that removed it). The actor is
described from the executor's config record (name, image, the container's labels), read before
a remove deletes it. Steps that find nothing to do publish nothing, so repeated (idempotent)
steps do not repeat events."""

from __future__ import annotations

from collections.abc import Callable

from model import Task
from worker.exec import ContainerState, Controller, ExitStatus, TaskExecutor
from worker.executor.executor import Executor

Publish = Callable[[str, str, dict[str, str]], None]     # (action, container id, attributes)


def describe(executor: Executor, cid: str) -> dict[str, str]:
    """The Actor attributes of a container: its labels, image and name."""
    try:
        ctl = executor.get(cid)
    except Exception:      # a corrupt record: the event still names the container
        ctl = None
    if ctl is None:
        return {"name": cid}
    config = ctl.config
    return {**config.labels, "image": config.image, "name": config.name or cid}


class EventfulController:
    def __init__(self, inner: Controller, cid: str, executor: Executor, publish: Publish) -> None:
        self._inner, self._cid, self._executor, self._publish = inner, cid, executor, publish
        # A shutdown that found the container up owes its die and stop events, even if it is
        # cancelled once the signal went (the task changed again): the next shutdown, which then
        # finds the container stopped, pays them.
        self._owed_stop = False

    def _emit(self, action: str, attributes: dict[str, str] | None = None, **extra: str) -> None:
        self._publish(action, self._cid, {**(attributes or describe(self._executor, self._cid)), **extra})

    async def prepare(self) -> None:
        before = (await self._inner.state()).status
        await self._inner.prepare()
        if before == "absent" and (await self._inner.state()).status != "absent":
            self._emit("create")

    async def start(self) -> None:
        before = (await self._inner.state()).status
        await self._inner.start()
        if before == "created":
            self._emit("start")

    async def wait(self) -> ExitStatus:
        status = await self._inner.wait()
        if status.oom_killed:
            self._emit("oom")
        self._emit("die", exitCode=str(status.exit_code))
        return status

    async def shutdown(self, grace: float | None = None) -> None:
        if (await self._inner.state()).status in ("running", "created"):
            self._owed_stop = True
        await self._inner.shutdown(grace)
        if self._owed_stop:
            self._owed_stop = False
            after = await self._inner.state()
            code = after.exit.exit_code if after.exit is not None else 0
            if after.exit is not None and after.exit.oom_killed:
                self._emit("oom")
            self._emit("die", exitCode=str(code))
            self._emit("stop")

    async def terminate(self) -> None:
        await self._inner.terminate()

    async def remove(self) -> None:
        before = await self._inner.state()
        attributes = describe(self._executor, self._cid)
        await self._inner.remove()
        if before.status != "absent":
            self._emit("destroy", attributes)

    async def state(self) -> ContainerState:
        return await self._inner.state()


class EventfulTaskExecutor:
    def __init__(self, inner: TaskExecutor, executor: Executor, publish: Publish) -> None:
        self._inner, self._executor, self._publish = inner, executor, publish

    async def controller(self, task: Task, progress: Callable[[str], None]) -> Controller:
        inner = await self._inner.controller(task, progress)
        return EventfulController(inner, task.id, self._executor, self._publish)

    def existing(self, task_id: str) -> Controller | None:
        found = self._inner.existing(task_id)
        return EventfulController(found, task_id, self._executor, self._publish) if found is not None else None
