"""The TaskExecutor of `worker.exec` on real containers: a task → its image → a ContainerController.

Theory of operation: `controller(task, progress)` makes sure the task's image is in the store
(pulling it if missing, reporting progress lines while the task is PREPARING), reads the
image's layers and config, and builds the `ContainerConfig` with `config_from_task`: the
container id is the task id, its name the task's display name, and it carries the swarm labels
users of Docker expect, and the task's secrets and configs as injected files, from the data
the agent holds for the node (`dependencies`; a reference without data rejects the task with
the name of what is missing). `existing(task_id)` finds the container made for a task earlier (live
restore). Image and spec problems surface as `ExecutorError` with a one-line message: fatal,
so the task is REJECTED with it (a missing image or secret does not appear by trying again).

With `networking`, every container joins its task's network sandbox (namespace, interfaces,
embedded DNS: worker.networking), made before the container is and removed after it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from worker.exec import ContainerState, Controller, ExecutorError, ExitStatus
from worker.executor.controller import ContainerController
from worker.executor.executor import Executor
from worker.executor.spec import ConfigError, InjectedFile
from worker.executor.taskspec import config_from_task, resolve_injected_files
from worker.networking import TaskSandbox


class TaskLike(Protocol):
    """What this module reads of `model.Task`."""

    id: str
    spec: dict[str, Any]
    service_id: str
    service_name: str
    node_id: str
    slot: int

    @property
    def display_name(self) -> str: ...


class ImageSource(Protocol):
    """What this module needs of `worker.images.store.ImageStore`."""

    async def ensure(self, ref: str, *, pull: str = ..., auth: Any = ...,
                     progress: Any = ...) -> Any: ...
    def rootfs_layers(self, image: Any) -> Any: ...
    def image_config(self, image: Any) -> dict[str, Any]: ...


class DependencySource(Protocol):
    """What this module needs of `worker.agent.dependencies.Dependencies`."""

    def files_for(self, task: Any) -> list[InjectedFile]: ...


class Sandboxes(Protocol):
    """What this module needs of `worker.networking.TaskNetworking`."""

    async def sandbox(self, task: Any) -> TaskSandbox: ...
    async def release(self, task_id: str) -> None: ...


class SandboxedController:
    """A container controller whose task sandbox goes when the container does."""

    def __init__(self, inner: ContainerController, task_id: str, sandboxes: Sandboxes) -> None:
        self.inner = inner
        self._task_id = task_id
        self._sandboxes = sandboxes

    async def prepare(self) -> None:
        await self.inner.prepare()

    async def start(self) -> None:
        await self.inner.start()

    async def wait(self) -> ExitStatus:
        return await self.inner.wait()

    async def shutdown(self, grace: float | None = None) -> None:
        await self.inner.shutdown(grace)

    async def terminate(self) -> None:
        await self.inner.terminate()

    async def remove(self) -> None:
        await self.inner.remove()
        await self._sandboxes.release(self._task_id)

    async def state(self) -> ContainerState:
        return await self.inner.state()


def attached_networks(task: Any) -> list[dict[str, Any]]:
    """What docker inspect shows of the task's networks: from its attachments (the allocator's
    addresses) and the aliases its spec asks for on each."""
    aliases = {str(n.get("Target") or ""): list(n.get("Aliases") or [])
               for n in (task.spec.get("Networks") or []) if isinstance(n, dict)}
    out = []
    for attachment in getattr(task, "networks_attachments", None) or []:
        network = attachment.get("Network") or {}
        network_id = str(network.get("ID") or "")
        addresses = attachment.get("Addresses") or []
        if not network_id or not addresses:
            continue
        name = str((network.get("Spec") or {}).get("Name") or network_id)
        out.append({"id": network_id, "name": name, "address": str(addresses[0]),
                    "aliases": aliases.get(network_id) or aliases.get(name) or []})
    return out


def swarm_labels(task: TaskLike) -> dict[str, str]:
    return {
        "com.docker.swarm.service.id": task.service_id,
        "com.docker.swarm.service.name": task.service_name,
        "com.docker.swarm.task.id": task.id,
        "com.docker.swarm.task.name": task.display_name,
        "com.docker.swarm.node.id": task.node_id,
    }


class RuncTaskExecutor:
    def __init__(self, executor: Executor, images: ImageSource, *, hostname: str = "",
                 networking: Sandboxes | None = None, pull_policy: str = "missing",
                 dependencies: DependencySource | None = None) -> None:
        self.executor = executor
        self.dependencies = dependencies
        self.images = images
        self.hostname = hostname
        self.networking = networking
        self.pull_policy = pull_policy

    async def controller(self, task: TaskLike, progress: Callable[[str], None]) -> Controller:
        spec = task.spec.get("ContainerSpec") or {}
        ref = spec.get("Image")
        if not ref or not isinstance(ref, str):
            raise ExecutorError("task: ContainerSpec.Image is required")
        files = self._files(task, spec)

        async def on_progress(event: dict[str, Any]) -> None:
            text = " ".join(str(event[k]) for k in ("status", "id") if event.get(k))
            if text:
                progress(text)

        try:
            record = await self.images.ensure(ref, pull=self.pull_policy, progress=on_progress)
            layers = self.images.rootfs_layers(record)
            image_config = self.images.image_config(record)
        except ExecutorError:
            raise
        except Exception as e:   # ImageError and friends carry a one-line message
            raise ExecutorError(str(getattr(e, "message", e))) from e
        sandbox = await self.networking.sandbox(task) if self.networking is not None else None
        try:
            config = config_from_task(
                task.id, task.display_name, task.spec, image_config, list(layers),
                hostname=self.hostname, labels=swarm_labels(task), files=files,
                netns_path=sandbox.netns_path if sandbox else "", resolv_conf=sandbox.resolv_conf if sandbox else "",
                sandbox_hosts=list(sandbox.hosts) if sandbox else None)
        except ConfigError as e:
            raise ExecutorError(f"invalid task spec: {e}") from e
        if sandbox is not None:
            config = replace(config, networks=attached_networks(task))
        return self._sandboxed(self.executor.controller(config), task.id)

    def _sandboxed(self, ctlr: ContainerController, task_id: str) -> Controller:
        if self.networking is None:
            return ctlr
        return SandboxedController(ctlr, task_id, self.networking)

    def _files(self, task: TaskLike, spec: dict[str, Any]) -> list[InjectedFile]:
        """The task's secrets and configs; checked before the image is pulled, so a task whose
        data is missing fails at once and names it."""
        if not spec.get("Secrets") and not spec.get("Configs"):
            return []
        try:
            if self.dependencies is None:   # nothing held: any file reference is missing
                return resolve_injected_files(spec, lambda _kind, _id, _name: None)
            return self.dependencies.files_for(task)
        except ConfigError as e:
            raise ExecutorError(f"task: {e}") from e

    def existing(self, task_id: str) -> Controller | None:
        ctlr = self.executor.get(task_id)
        return self._sandboxed(ctlr, task_id) if ctlr is not None else None
