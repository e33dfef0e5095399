"""Standalone containers: what `docker run` makes on a node, containers without a task.

Theory of operation: a standalone container is an executor container (worker.executor) whose
state dir also holds a create record (`standalone.json`, see worker.standalone.create); its ID
is 64 hex digits, so it never collides with a task ID and no task runner ever adopts it. All
state is in the executor's records, so a restarted daemon sees these containers as it left
them (they run on under their shims; an exited one stays listed until removed).
  - create: resolve the image, check the name is free (names are reserved while a create is
    under way), write the record, then `prepare` (conmon runs `runc create`), so the container
    is "created" with its shim already holding its stdio: an attach before the start misses
    nothing.
  - start: a created container is started; an exited one is reset (worker.executor.controller
    `reset`: runtime state dropped, writable layer and log kept) and made anew, as dockerd
    restarts a container from its config.
  - every started container gets a watcher (owned here; `close` cancels them) that runs its
    health check if it has one (State.Health, `health_status` events), emits `die`
    when it exits and removes it if it was created with AutoRemove; `restore`, at daemon
    start, watches the running ones again and removes the AutoRemove ones that exited while
    the daemon was down.
Removal goes through `LocalContainers.remove`, which wakes `wait?condition=removed` waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from aio import cancel_and_wait
from engineapi.http import ApiError
from worker.exec import ExecutorError
from worker.executor import bundle
from worker.executor.container_view import ContainerView
from worker.executor.controller import ContainerController
from worker.executor.local_containers import LocalContainers
from worker.standalone import names
from worker.standalone.attach import AttachError, resize
from worker.standalone.create import (
    ISOLATED_MODES,
    CreateError,
    container_name,
    from_body,
    labels_match,
    stray_endpoints,
    with_links,
)

log = logging.getLogger("shoal.standalone")


class ImageSource(Protocol):
    """What this module needs of `worker.images.store.ImageStore`."""

    def get(self, name: str) -> Any: ...
    def rootfs_layers(self, image: Any) -> Any: ...
    def image_config(self, image: Any) -> dict[str, Any]: ...


class ContainerNetworks(Protocol):
    """Where a standalone container's network namespace comes from (worker.localnet)."""

    async def join(self, cid: str, name: str, mode: str, endpoints: Any) -> tuple[str, list[dict[str, Any]]]:
        """The namespace for a new container in NetworkMode `mode` ("" = one runc makes) and the
        networks it is attached to; ApiError 404 for an unknown network."""
        ...

    async def release(self, cid: str) -> None:
        """The container is removed: whatever `join` and later connections made for it goes."""
        ...

    def host_lines(self, cid: str) -> list[str]:
        """/etc/hosts lines for the container's peers on its networks."""
        ...

    on_change: Callable[[set[str]], Awaitable[None]] | None   # set by StandaloneContainers


class IsolatedNetworks:
    """No local networks: a namespace of its own with only `lo`, or the daemon's (host)."""

    async def join(self, cid: str, name: str, mode: str, endpoints: Any) -> tuple[str, list[dict[str, Any]]]:
        if mode in ISOLATED_MODES:
            return "", []
        if mode == "host":
            return f"/proc/{os.getpid()}/ns/net", []
        raise ApiError(404, f"network {mode} not found")

    async def release(self, cid: str) -> None:
        return None

    def host_lines(self, cid: str) -> list[str]:
        return []

    on_change: Callable[[set[str]], Awaitable[None]] | None = None


def _tree_size(root: Path) -> int:
    """Bytes in the files under `root` (a container's writable layer: what its removal frees)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class StandaloneContainers:
    def __init__(self, containers: LocalContainers, images: ImageSource,
                 networks: ContainerNetworks | None = None) -> None:
        self.containers = containers
        self.executor = containers.executor
        self.images = images
        self.networks: ContainerNetworks = networks or IsolatedNetworks()
        containers.removal_hooks.append(self.networks.release)
        self.networks.on_change = self.refresh_hosts
        self._reserved: set[str] = set()          # names of containers being created
        self._watchers: set[asyncio.Task[None]] = set()      # one per run of a started container
        self._restarting: set[str] = set()                   # their exit is no end: no auto-remove
        self._closed = False

    # ---- create ----------------------------------------------------------------------------
    def _image(self, ref: str) -> tuple[dict[str, Any], list[Path]]:
        try:
            record = self.images.get(ref)
            return self.images.image_config(record), list(self.images.rootfs_layers(record))
        except Exception as e:      # ImageNotFound and friends
            status = getattr(e, "status", 404)
            raise ApiError(status if isinstance(status, int) else 404,
                           str(getattr(e, "message", "")) or f"No such image: {ref}") from None

    async def _taken(self, name: str) -> ContainerView | None:
        return next((v for v in await self.containers.views() if v.name == name), None)

    async def _free_name(self, wanted: str) -> str:
        if wanted:
            name = container_name(wanted)
            holder = await self._taken(name)
            if holder is not None or name in self._reserved:
                owner = holder.id if holder is not None else "(being created)"
                raise ApiError(409, f'Conflict. The container name "/{name}" is already in use by container '
                                    f'"{owner}". You have to remove (or rename) that container to be able to '
                                    "reuse that name.")
            return name
        taken = {v.name for v in await self.containers.views()} | self._reserved
        return names.generate(taken)

    async def create(self, body: Any, wanted_name: str) -> str:
        """The ID of the new container (created, not started)."""
        if not isinstance(body, dict):
            raise ApiError(400, "container config must be a JSON object")
        ref = body.get("Image")
        if not ref or not isinstance(ref, str):
            raise ApiError(400, "no image specified: Config.Image is required")
        try:
            name = await self._free_name(wanted_name)
        except CreateError as e:
            raise ApiError(e.status, e.message) from None
        self._reserved.add(name)
        try:
            image_config, layers = self._image(ref)
            cid = secrets.token_hex(32)
            host = body.get("HostConfig") or {}
            mode = str(host.get("NetworkMode") or "") if isinstance(host, dict) else ""
            endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") \
                if isinstance(body.get("NetworkingConfig"), dict) else None
            try:
                made = from_body(cid, name, body, ref, image_config, layers, now=time.time(), netns_path="")
                endpoints = with_links(endpoints, mode, made.record["HostConfig"]["Links"] or [],
                                       body.get("MacAddress"))
            except CreateError as e:
                raise ApiError(e.status, e.message) from None
            try:
                netns_path, attached = await self.networks.join(cid, name, mode, endpoints)
            except ApiError as e:     # not a 404: the CLI takes a 404 from create for a missing image
                raise ApiError(400 if e.status == 404 else e.status, e.message) from None
            if stray := stray_endpoints(endpoints, mode, attached):
                await self.networks.release(cid)
                raise ApiError(400, f"network {stray[0]} not found, or not the container's NetworkMode "
                                    f"({mode or 'default'}): NetworkingConfig.EndpointsConfig may only name that "
                                    "network (docker network connect adds others)")
            # a swarm overlay's entry brings the embedded DNS's resolv.conf (worker.localnet)
            resolv = next((r for e in attached if (r := e.pop("resolv_conf", ""))), "")
            ctl = self.executor.controller(replace(made.config, netns_path=netns_path, networks=attached,
                                                   resolv_conf=resolv or made.config.resolv_conf))
            try:
                await asyncio.to_thread(self._write_record, ctl, made.record, made.bind_sources)
                await ctl.prepare()
            except (ExecutorError, OSError) as e:
                await asyncio.to_thread(ctl.paths.standalone_record.unlink, True)
                await self.networks.release(cid)
                raise ApiError(500, str(e)) from None
            if made.config.tty and made.console_size is not None:
                self._resize(ctl, *made.console_size)
            if attached:
                await self.refresh_hosts({cid})
        finally:
            self._reserved.discard(name)
        view = await self.containers.view_of(ctl)
        self.containers.emit("create", view)
        return cid

    @staticmethod
    def _write_record(ctl: ContainerController, record: dict[str, Any], bind_sources: list[str]) -> None:
        for source in bind_sources:       # dockerd makes a missing -v host directory
            Path(source).mkdir(parents=True, exist_ok=True)
        ctl.paths.state.mkdir(parents=True, exist_ok=True)
        _write_json(ctl.paths.standalone_record, record)

    # ---- lifecycle -------------------------------------------------------------------------
    async def _standalone(self, ref: str) -> tuple[ContainerView, ContainerController]:
        view, ctl = await self.containers.get(ref)
        if view.standalone is None:
            raise ApiError(409, f"container {view.name} is a swarm task's container: its task "
                                "decides when it runs (use docker service commands)")
        return view, ctl

    async def refresh_hosts(self, cids: set[str]) -> None:
        """Rewrite the /etc/hosts of these standalone containers (in place: the container sees
        it) with their network peers, after the container's own lines."""
        def write(ctl: ContainerController, lines: list[str]) -> None:
            hosts = ctl.paths.etc / "hosts"
            if hosts.exists():
                config = ctl.config
                hosts.write_text(bundle.hosts_file(config.hostname or config.id[:12], [*config.extra_hosts, *lines]))

        for cid in sorted(cids):
            ctl = self.containers.controller(cid)
            if ctl is not None and ctl.paths.standalone_record.exists():
                await asyncio.to_thread(write, ctl, self.networks.host_lines(cid))

    async def recreate(self, ref: str) -> ContainerView:
        """Make an exited standalone container "created" again: its shim anew, holding its
        stdio, so a client can attach before it starts (`docker start -a`)."""
        view, ctl = await self._standalone(ref)
        if view.state.status in ("stopped", "absent"):
            try:
                await ctl.reset()
                await ctl.prepare()
            except ExecutorError as e:
                raise ApiError(500, f"failed to start container {view.id}: {e}") from None
            await self.refresh_hosts({view.id})
        return await self.containers.view_of(ctl)

    async def start(self, ref: str) -> bool:
        """Start (or start again) a standalone container; False if it was running already."""
        view, ctl = await self._standalone(ref)
        if view.status == "running":
            return False
        try:
            if view.state.status in ("stopped", "absent"):
                await ctl.reset()
                await ctl.prepare()
                await self.refresh_hosts({view.id})
            await ctl.start(until_healthy=False)   # its health only shows: the watcher probes
        except ExecutorError as e:
            raise ApiError(500, f"failed to start container {view.id}: {e}") from None
        self.containers.emit("start", await self.containers.view_of(ctl))
        self.watch(ctl)
        return True

    async def restart(self, ref: str, timeout: float | None) -> None:
        view, _ = await self._standalone(ref)
        self._restarting.add(view.id)
        try:
            await self.containers.stop(view.id, timeout, None)
            await self.start(view.id)
        finally:
            self._restarting.discard(view.id)
        self.containers.emit("restart", view)

    async def rename(self, ref: str, new: str) -> None:
        if not new:
            raise ApiError(400, "Neither old nor new names may be empty")
        try:
            name = container_name(new)
        except CreateError as e:
            raise ApiError(e.status, e.message) from None
        view, ctl = await self.containers.get(ref)
        if name == view.name:
            raise ApiError(409, "Renaming a container with the same name as its current name")
        await self._free_name(name)
        await self.rewrite_config(ctl, name=name)
        self.containers.emit("rename", await self.containers.view_of(self.containers.controller(view.id) or ctl),
                             oldName="/" + view.name)

    async def rewrite_config(self, ctl: ContainerController, **changes: Any) -> None:
        """Change fields of a container's config record (its name, its networks): what the API
        shows of it; the running container is not touched."""
        current = self.executor.get(ctl.id)
        if current is None:
            raise ApiError(404, f"No such container: {ctl.id}")
        await asyncio.to_thread(_write_json, ctl.paths.config, replace(current.config, **changes).to_json())

    def resize_tty(self, ctl: ContainerController, view: ContainerView, height: int, width: int) -> None:
        if view.status not in ("running", "created"):
            raise ApiError(409, f"Container {view.id} is not running")
        if not view.config.tty:
            return                 # nothing to resize: dockerd ignores it too
        self._resize(ctl, height, width)

    @staticmethod
    def _resize(ctl: ContainerController, height: int, width: int) -> None:
        try:
            resize(ctl.paths.bundle, height, width)
        except AttachError as e:
            raise ApiError(409, str(e)) from None

    async def prune(self, until: float | None, labels: list[str]) -> dict[str, Any]:
        """Remove the standalone containers that are not running (dockerd's `container prune`)."""
        deleted, reclaimed = [], 0
        for view in await self.containers.views():
            if view.standalone is None or view.status == "running":
                continue
            if until is not None and view.created >= until:
                continue
            if not labels_match(view.labels, labels):
                continue
            size = await asyncio.to_thread(_tree_size, self.executor.layout.container(view.id).upper)
            try:
                await self.containers.remove(view.id, force=True)
            except ApiError as e:
                if e.status != 404:
                    raise
                continue
            deleted.append(view.id)
            reclaimed += size
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # ---- watchers --------------------------------------------------------------------------
    def watch(self, ctl: ContainerController) -> None:
        """Follow a started container until this run of it exits."""
        if self._closed:
            return
        task = asyncio.ensure_future(self._follow(ctl))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _follow(self, ctl: ContainerController) -> None:
        probing = asyncio.ensure_future(self._probe(ctl)) if ctl.health is not None else None
        try:
            status = await ctl.wait_exit()
        except ExecutorError as e:
            log.warning("container %s: %s", ctl.id, e)
            return
        finally:
            if probing is not None:
                await cancel_and_wait([probing])
        view = await self.containers.view_of(ctl)
        self.containers.emit("die", view, exitCode=str(status.exit_code))
        if view.auto_remove and view.id not in self._restarting and view.status != "running":
            await self._auto_remove(view.id)

    @staticmethod
    async def _probe(ctl: ContainerController) -> None:
        """Run the container's health check for this run of it (status from "starting"; each
        change a `health_status` event through the executor), as dockerd does for any container
        with one: the status only shows (inspect, ps, the health filter), nothing acts on it."""
        assert ctl.health is not None
        ctl.health.reset()

        async def running() -> bool:
            return (await ctl.state()).status == "running"

        await ctl.health.run_until(running, set())      # returns once a probe found it stopped

    async def _auto_remove(self, cid: str) -> None:
        try:
            await self.containers.remove(cid, force=True)
        except ApiError as e:
            if e.status != 404:
                log.warning("container %s: auto-remove: %s", cid, e.message)

    async def restore(self) -> None:
        """At daemon start: watch the running standalone containers again, and remove those
        with AutoRemove that exited while no daemon watched them."""
        for view in await self.containers.views():
            if view.standalone is None:
                continue
            if view.status == "running":
                ctl = self.containers.controller(view.id)
                if ctl is not None:
                    self.watch(ctl)
            elif view.status == "exited" and view.auto_remove:
                await self._auto_remove(view.id)

    async def close(self) -> None:
        self._closed = True
        watchers = list(self._watchers)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

