"""The containers of this node as the node-local Engine API sees them: listing, lookup, and the
operations `docker kill/stop/rm/top` make on them.

Theory of operation: nothing is held here. Every call reads what the executor records (the
config record of each container under the run dir, runc's state, the exit record), so the API
shows exactly what the task controllers act on, including containers adopted after a daemon
restart. The operations go through the container's `ContainerController`, the same idempotent
steps the task runner uses: a container the API kills or removes is seen by its task runner as
a container that exited (its task fails and the orchestrator replaces it, as with dockerd). On
`remove`, the runner's waiter and this one both wake on the shim's exit; the runner reads the
exit code before any await here gives the removal a chance to delete it.
`on_event` hears each change made here (Docker's container event actions) for `GET /events`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal as signals
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engineapi.http import ApiError
from worker.exec import ExecutorError, ExitStatus
from worker.executor.cgroup_stats import cgroup_procs
from worker.executor.container_view import ContainerView, find
from worker.executor.controller import ContainerController
from worker.executor.executor import Executor
from worker.executor.runtime import RuntimeFailure

PS_TIMEOUT = 10.0
KILL_WAIT = 10.0
GONE_KEPT = 256        # removed containers whose exit status a late waiter can still read


def read_record(path: Path) -> dict[str, Any] | None:
    """A standalone container's create record (None for a task's container, or if unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
EventSink = Callable[[str, ContainerView, dict[str, str]], None]


def parse_signal(text: str | None, default: int = signals.SIGKILL) -> int:
    """"SIGKILL", "KILL", "9" → 9; anything else is a 400 as in dockerd."""
    if text is None or text == "":
        return default
    upper = text.strip().upper()
    if upper.isdigit():
        number = int(upper)
        if 0 < number < 65:
            return number
    else:
        try:
            return int(signals.Signals[upper if upper.startswith("SIG") else "SIG" + upper])
        except KeyError:
            pass
    raise ApiError(400, f"Invalid signal: {text}")


class LocalContainers:
    def __init__(self, executor: Executor, image_id: Callable[[str], str] = lambda ref: "",
                 on_event: EventSink | None = None) -> None:
        self.executor = executor
        self._image_id = image_id
        self.on_event = on_event
        self._removed: dict[str, asyncio.Event] = {}     # set when the container is removed here
        self._removing: dict[str, asyncio.Event] = {}    # set when a removal begun here ends, either way
        # the exit status of the containers removed here lately (their records went with them), for
        # waiters that resolved the container before it went (`docker run --rm` races its removal)
        self._gone: OrderedDict[str, ExitStatus] = OrderedDict()
        # called with the ID of each container removed here (its network namespace goes)
        self.removal_hooks: list[Callable[[str], Awaitable[None]]] = []

    def image_id_of(self, ref: str) -> str:
        """The ID of the local image `ref` names ("" if none)."""
        return self._image_id(ref)

    def emit(self, action: str, view: ContainerView, **attributes: str) -> None:
        if self.on_event is not None:
            self.on_event(action, view, attributes)

    # ---- reading ---------------------------------------------------------------------------
    def _ids(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.executor.layout.states_dir) if e.is_dir())
        except FileNotFoundError:
            return []

    def controller(self, cid: str) -> ContainerController | None:
        try:
            return self.executor.get(cid)
        except ExecutorError:
            return None

    async def view_of(self, ctl: ContainerController) -> ContainerView:
        state = await ctl.state()
        standalone = read_record(ctl.paths.standalone_record)
        try:
            created = float(standalone["Created"]) if standalone else ctl.paths.config.stat().st_mtime
        except (OSError, KeyError, TypeError, ValueError):
            created = time.time()
        image = ctl.config.image
        return ContainerView(ctl.config, state, created, self._image_id(image) if image else "",
                             str(ctl.paths.log), standalone)

    async def views(self) -> list[ContainerView]:
        """Every container with a config record; one that vanishes or cannot be read while
        being listed (removed meanwhile) is left out."""
        controllers = await asyncio.to_thread(
            lambda: [c for c in (self.controller(cid) for cid in self._ids()) if c is not None])
        out = []
        for ctl in controllers:
            try:
                out.append(await self.view_of(ctl))
            except (RuntimeFailure, OSError, ValueError):
                continue
        return out

    async def get(self, ref: str) -> tuple[ContainerView, ContainerController]:
        """The container `ref` names (ID, name, unique ID prefix); 404 otherwise."""
        ctl = self.controller(ref) if ref and "/" not in ref else None
        if ctl is None:
            view = find(await self.views(), ref)
            ctl = self.controller(view.id)
            if ctl is None:
                raise ApiError(404, f"No such container: {ref}")
        return await self.view_of(ctl), ctl

    # ---- operations ------------------------------------------------------------------------
    async def kill(self, ref: str, sig: int) -> None:
        view, ctl = await self.get(ref)
        if view.status != "running":
            raise ApiError(409, f"Cannot kill container: {ref}: Container {view.id} is not running")
        try:
            await ctl.runc.kill(view.id, sig)
        except RuntimeFailure as e:
            raise ApiError(500, f"Cannot kill container: {ref}: {e}") from e
        self.emit("kill", view, signal=str(sig))
        if sig == signals.SIGKILL:        # as dockerd: answer once it is dead and its exit code known
            async with asyncio.timeout(KILL_WAIT):
                await ctl.wait_exit()

    async def stop(self, ref: str, timeout: float | None, sig: int | None) -> bool:
        """Stop signal, the grace period, SIGKILL; False if it was not running (dockerd's 304)."""
        view, ctl = await self.get(ref)
        if view.status != "running":
            return False
        grace = ctl.config.stop_grace if timeout is None or timeout < 0 else timeout
        try:
            if sig is not None:
                await ctl.runc.kill(view.id, sig)
                try:
                    async with asyncio.timeout(grace):
                        await ctl.wait_exit()
                except TimeoutError:
                    await ctl.terminate()
            else:
                await ctl.shutdown(grace)
        except (ExecutorError, RuntimeFailure) as e:
            raise ApiError(500, f"cannot stop container: {ref}: {e}") from e
        self.emit("stop", view)
        return True

    async def remove(self, ref: str, *, force: bool) -> None:
        view, ctl = await self.get(ref)
        if view.status == "running" and not force:
            raise ApiError(409, f'cannot remove container "/{view.name}": container is running: stop '
                                "the container before removing or force remove")
        removing = self._removing.setdefault(view.id, asyncio.Event())
        try:
            if view.status == "running":
                await ctl.terminate()
                self.emit("kill", view, signal=str(int(signals.SIGKILL)))
            await ctl.remove()
            self._gone[view.id] = ctl.final_exit or ExitStatus(-1, error="removed before it ran")
            while len(self._gone) > GONE_KEPT:
                self._gone.popitem(last=False)
            for hook in self.removal_hooks:
                await hook(view.id)
        except ExecutorError as e:
            raise ApiError(500, f"Could not remove container {ref}: {e}") from e
        finally:
            self._removing.pop(view.id, None)
            removing.set()
        if (removed := self._removed.pop(view.id, None)) is not None:
            removed.set()
        self.emit("destroy", view)

    async def wait(self, view: ContainerView, ctl: ContainerController, condition: str) -> tuple[int, str]:
        """(exit code, error) once the container `get` resolved is not running / exits next / is
        removed; answered even when it is removed meanwhile."""
        if condition not in ("", "not-running", "next-exit", "removed"):
            raise ApiError(400, f"invalid condition: {condition!r}")
        if condition == "removed" and view.standalone is not None and view.id not in self._gone:
            removed = self._removed.setdefault(view.id, asyncio.Event())
            # no await since the event was made: no removal missed
            if view.id in self._removing or ctl.paths.config.exists():
                await removed.wait()
            else:
                self._removed.pop(view.id, None)
        if (gone := self._gone.get(view.id)) is not None:
            return gone.exit_code, gone.error
        if condition in ("", "not-running") and view.status != "running":
            if view.status != "exited" or view.state.exit is not None:
                return view.exit_code, ""
            # runc saw the process end before its shim recorded the exit code: wait for it
            # (answering now would say 0 for a container that exited 2)
        status = await ctl.wait_exit()    # "removed" too: a task container is removed by its task
        if (removing := self._removing.get(view.id)) is not None:
            await removing.wait()         # its files go during the removal, the exit record with them
        gone = self._gone.get(view.id)    # removed before its exit was read: the record went with it
        return (gone.exit_code, gone.error) if gone is not None else (status.exit_code, status.error)

    async def top(self, ref: str, ps_args: str) -> dict[str, Any]:
        view, ctl = await self.get(ref)
        if view.status != "running":
            raise ApiError(409, f"Container {view.id} is not running")
        pids = set(await asyncio.to_thread(cgroup_procs, ctl.layout.cgroups_path(view.id)))
        args = ps_args.split() if ps_args.strip() else ["-ef"]
        proc = await asyncio.create_subprocess_exec(
            "ps", *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(PS_TIMEOUT):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ApiError(500, "ps timed out") from None
        if proc.returncode != 0:
            raise ApiError(500, f"Error running ps: exit status {proc.returncode}: {err.decode().strip()}")
        return parse_ps(out.decode(errors="replace"), pids)


def parse_ps(output: str, pids: set[int]) -> dict[str, Any]:
    """dockerd's parsePSOutput: titles from the first line, the rows whose PID is the
    container's, the last column keeping its spaces."""
    lines = output.splitlines()
    if not lines:
        raise ApiError(500, "ps printed nothing")
    titles = lines[0].split()
    if "PID" not in titles:
        raise ApiError(500, "Couldn't find PID field in ps output")
    pid_index = titles.index("PID")
    processes = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) <= pid_index or not fields[pid_index].isdigit():
            continue
        if int(fields[pid_index]) in pids:
            head = line.split(None, len(titles) - 1)
            processes.append(head)
    return {"Titles": titles, "Processes": processes}

