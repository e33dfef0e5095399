"""The executor contract (swarmkit's agent/exec): the `Controller` of one task's container, the
`TaskExecutor` that makes controllers, the temporary-vs-fatal error split, and `do`, which moves
a task's observed state one step through a controller.

Theory of operation:
  - A `Controller` is the lifecycle of one container: `prepare → start → wait`, with
    `shutdown`/`terminate`/`remove` at any time and `state` to read what exists. Every method is
    idempotent (preparing a prepared container, starting a started one, stopping a stopped one
    do nothing), so a step may be repeated after a crash, a cancellation or a temporary error.
    The runc implementation is `worker.executor.controller.ContainerController`; unit tests use
    an in-memory one behind this same protocol.
  - `do(task, ctlr)` makes at most one transition per call, from the task's observed status
    towards its desired state, and returns the new status with an `Outcome`: ADVANCED (call
    again), NOOP (nothing to do until the task changes) or RETRY (a temporary error; call again
    later, the status only carries the error). It never reports anything itself.
  - Errors: an operation that raises `TemporaryError` (or an error raised `from` one) is retried
    and the task stays where it is. Any other exception is fatal to the task: before STARTING
    it becomes REJECTED (it never ran: the orchestrator may place it elsewhere), from STARTING
    on it becomes FAILED. Cancellation is never an error: it propagates.
  - The desired state bounds how far a task goes: READY waits for RUNNING before starting; a
    desired SHUTDOWN (or later) stops the container and ends in SHUTDOWN. A task that already
    ended keeps its state, but its container is still stopped (a container whose health check
    failed is left running by `wait`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol

from model import Task, TaskState, TaskStatus, format_time

log = logging.getLogger("shoal.exec")

# ---- what a controller reports --------------------------------------------------------------


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    oom_killed: bool = False
    finished_at: str = ""
    error: str = ""            # set when the shim lost track of the container

    @property
    def failed(self) -> bool:
        return self.exit_code != 0 or self.oom_killed or bool(self.error)

    @property
    def message(self) -> str:
        """The task status message: "" for success."""
        if self.error:
            return f"task: {self.error}"
        if not self.failed:
            return ""
        text = f"task: non-zero exit ({self.exit_code})"
        return text + ": OOMKilled" if self.oom_killed else text


ContainerStatus = Literal["absent", "created", "running", "stopped"]


@dataclass(frozen=True)
class ContainerState:
    status: ContainerStatus
    pid: int = 0
    started_at: str = ""
    exit: ExitStatus | None = None
    health: dict[str, Any] | None = None     # the Engine API's State.Health, with a health check


# ---- errors ---------------------------------------------------------------------------------


class ExecutorError(Exception):
    """A container operation failed; the message is meant for the task status. Fatal to the
    task (REJECTED before STARTING, FAILED from then on) unless it is a `TemporaryError`."""


class TemporaryError(ExecutorError):
    """The operation may succeed if tried again (swarmkit's `exec.MakeTemporary`): the task keeps
    its state and the same step is retried later."""


def is_temporary(error: BaseException) -> bool:
    """True for a `TemporaryError`, or an error raised `from` one (at any depth)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TemporaryError):
            return True
        seen = seen.__cause__
    return False


# ---- the contract ---------------------------------------------------------------------------


class Controller(Protocol):
    """One task's container. Every method is idempotent; see the module docstring."""

    async def prepare(self) -> None:
        """Make everything the container needs, so that `start` only starts it."""
        ...

    async def start(self) -> None:
        """Start the prepared container; return once it runs (or has run)."""
        ...

    async def wait(self) -> ExitStatus:
        """Block until the container exits; its exit status. May raise (e.g. unhealthy).
        Cancelling the wait leaves the container alone."""
        ...

    async def shutdown(self, grace: float | None = None) -> None:
        """The stop signal, up to `grace` seconds (default: the container's), then terminate."""
        ...

    async def terminate(self) -> None:
        """Kill the container now."""
        ...

    async def remove(self) -> None:
        """Stop the container if need be and leave nothing of it behind."""
        ...

    async def state(self) -> ContainerState:
        """What exists of the container now."""
        ...


class TaskExecutor(Protocol):
    """Makes controllers (swarmkit's `exec.Executor`)."""

    async def controller(self, task: Task, progress: Callable[[str], None]) -> Controller:
        """A controller for the task; may pull its image first, reporting progress lines.
        Raises like a controller does (fatal or temporary)."""
        ...

    def existing(self, task_id: str) -> Controller | None:
        """The controller of a container made for this task earlier (live restore), if any."""
        ...


# ---- one step -------------------------------------------------------------------------------


class Outcome(enum.Enum):
    ADVANCED = "advanced"   # the status moved (or ended): call `do` again
    NOOP = "noop"           # nothing to do until the task changes (swarmkit's ErrTaskNoop)
    RETRY = "retry"         # a temporary error: the same step later (swarmkit's ErrTaskRetry)


class Step(NamedTuple):
    status: TaskStatus
    outcome: Outcome


def _now() -> str:
    return format_time(datetime.now(UTC).timestamp())


def _advance(status: TaskStatus, state: TaskState, message: str, err: str = "",
             container_status: dict[str, Any] | None = None, port_status: dict[str, Any] | None = None) -> Step:
    """The status moved to `state`; a backwards move raises (model.IllegalTransition)."""
    status.advance(state, _now(), message, err, container_status, port_status)
    return Step(status, Outcome.ADVANCED)


def failure(status: TaskStatus, error: Exception, message: str) -> Step:
    """The step that `error` makes of a failed operation on a task in `status`: a temporary error
    keeps the state and only records the error (RETRY); any other error ends the task, REJECTED
    before STARTING and FAILED from STARTING on. A task that has ended already keeps its status
    as it is (RETRY, or NOOP for a fatal error). `status` is not modified."""
    status = replace(status)
    temporary = is_temporary(error)
    if status.state.is_terminal:
        if not temporary:
            log.warning("task already %s: %s: %s", status.state.api, message, error)
        return Step(status, Outcome.RETRY if temporary else Outcome.NOOP)
    if temporary:
        status.err = str(error)
        return Step(status, Outcome.RETRY)
    terminal = TaskState.REJECTED if status.state < TaskState.STARTING else TaskState.FAILED
    return _advance(status, terminal, message, str(error) or type(error).__name__)


def _container(task: Task, pid: int = 0, exit_code: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"ContainerID": task.id, "PID": pid}
    if exit_code is not None:
        out["ExitCode"] = exit_code
    return out


def port_status(task: Task) -> dict[str, Any] | None:
    """Status.PortStatus of a task that publishes host-mode ports (its `endpoint`, as the scheduler
    placed it), as dockerd reports it from the container's port bindings:
    {"Ports": [{"Protocol", "TargetPort", "PublishedPort", "PublishMode": "host"}]}. None when it
    publishes none (the status then keeps the empty PortStatus)."""
    ports = [{"Protocol": str(p.get("Protocol") or "tcp").lower(), "TargetPort": int(p.get("TargetPort") or 0),
              "PublishedPort": int(p.get("PublishedPort") or 0), "PublishMode": "host"}
             for p in (task.endpoint or {}).get("Ports") or ()
             if isinstance(p, dict) and str(p.get("PublishMode") or "").lower() == "host"]
    return {"Ports": ports} if ports else None


async def do(task: Task, ctlr: Controller) -> Step:
    """Make one transition of `task` (its `status` and `desired_state`) through `ctlr`.

    The returned status is new (`task.status` is not modified); it should be reported and become
    the task's status before the next call. Controller errors end up in the status, as RETRY or
    as a terminal state (`failure`); cancellation propagates."""
    status = replace(task.status)
    state, desired = status.state, task.desired_state
    if desired >= TaskState.SHUTDOWN:
        # The agent never takes a task past SHUTDOWN. One that ended keeps its state, but what
        # still runs of its container is stopped (nothing to do once it is stopped).
        if state == TaskState.SHUTDOWN:
            return Step(status, Outcome.NOOP)
        try:
            await ctlr.shutdown()
        except Exception as e:   # not CancelledError (a BaseException): cancelling is no error
            return failure(status, e, "shutdown failed")
        if state.is_terminal:
            return Step(status, Outcome.NOOP)
        return _advance(status, TaskState.SHUTDOWN, "shutdown")
    if state > desired:
        return Step(status, Outcome.NOOP)
    # The states with work to do go on as long as the desired state is not behind them
    # (PREPARING → READY when READY is desired).
    try:
        if state == TaskState.PREPARING:
            await ctlr.prepare()
            return _advance(status, TaskState.READY, "prepared")
        if state == TaskState.STARTING:
            await ctlr.start()
            current = await ctlr.state()
            return _advance(status, TaskState.RUNNING, "started", container_status=_container(task, current.pid),
                            port_status=port_status(task))
        if state == TaskState.RUNNING:
            exit_status = await ctlr.wait()
            container = _container(task, exit_code=exit_status.exit_code)
            if exit_status.failed:
                return _advance(status, TaskState.FAILED, "task failed", exit_status.message, container)
            return _advance(status, TaskState.COMPLETE, "finished", container_status=container)
    except Exception as e:
        return failure(status, e, _FAILED_MESSAGE[state])
    # The states that only pass on: they wait until the desired state is beyond them.
    if state >= desired:
        return Step(status, Outcome.NOOP)
    if state < TaskState.ACCEPTED:
        return _advance(status, TaskState.ACCEPTED, "accepted")
    if state == TaskState.ACCEPTED:
        return _advance(status, TaskState.PREPARING, "preparing")
    if state == TaskState.READY:
        return _advance(status, TaskState.STARTING, "starting")
    return Step(status, Outcome.NOOP)       # an ended task


_FAILED_MESSAGE = {TaskState.PREPARING: "preparing failed", TaskState.STARTING: "starting failed",
                   TaskState.RUNNING: "task failed"}
