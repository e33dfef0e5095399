"""Live convergence progress for `shoal service create/update/scale/rollback`.

Theory of operation: every 200 ms the CLI reads the service (insertDefaults=false), its
up-to-date tasks and the nodes, and `evaluate()` (pure) decides how far it got:
- replicated: tasks grouped by slot (lowest desired state, then lowest observed state wins);
  converged when the slots whose task runs (desired <= running) number the replicas;
- global: the same per node, over the active nodes that hold a task of the service;
- jobs: converged when enough tasks of the current job iteration completed.
Tasks on down nodes are skipped. A slot whose task reports an error shows the error instead of
its bar. Once converged, the service must stay converged for `UpdateConfig.Monitor` (default
5 s) before "Service X converged" (an update the server marks completed ends at once). A paused
update or rollback ends with an error, as does the overall `timeout`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from cli.client import ClientError, DaemonClient

POLL_INTERVAL = 0.2
DEFAULT_MONITOR = 5.0
STATES = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")
ORDER = {s: i for i, s in enumerate((*STATES, "complete", "shutdown", "failed", "rejected", "remove",
                                      "orphaned"))}
BAR_WIDTH = 25
ERR_WIDTH = 75


class ProgressError(ClientError):
    """The service did not converge (paused, or timed out)."""


@dataclass
class SlotLine:
    label: str
    state: str
    err: str = ""


@dataclass
class Progress:
    converged: bool
    running: int
    desired: int
    lines: list[SlotLine] = field(default_factory=list)
    word: str = "tasks"


def _rank(task: dict[str, Any]) -> tuple[int, int]:
    return (ORDER.get(task.get("DesiredState", ""), 99), ORDER.get((task.get("Status") or {}).get("State", ""), 99))


def _pick_per_key(tasks: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    chosen: dict[Any, dict[str, Any]] = {}
    for task in tasks:
        k = task.get(key)
        if k not in chosen or _rank(task) < _rank(chosen[k]):
            chosen[k] = task
    return chosen


def _is_running(task: dict[str, Any]) -> bool:
    return (task.get("Status") or {}).get("State") == "running" and \
        ORDER.get(task.get("DesiredState", ""), 99) <= ORDER["running"]


def _line(label: str, task: dict[str, Any] | None) -> SlotLine:
    if task is None:
        return SlotLine(label, "")
    status = task.get("Status") or {}
    return SlotLine(label, status.get("State", ""), status.get("Err", "") or "")


def evaluate(service: dict[str, Any], tasks: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> Progress:
    active = {n["ID"] for n in nodes if (n.get("Status") or {}).get("State") != "down"}
    live = [t for t in tasks if not t.get("NodeID") or t.get("NodeID") in active]
    mode = service["Spec"].get("Mode") or {}
    if "ReplicatedJob" in mode or "GlobalJob" in mode:
        iteration = ((service.get("JobStatus") or {}).get("JobIteration") or {}).get("Index")
        current = [t for t in live if (t.get("JobIteration") or {}).get("Index") == iteration]
        done = sum((t.get("Status") or {}).get("State") == "complete" for t in current)
        if "ReplicatedJob" in mode:
            job = mode["ReplicatedJob"]
            total = int(job.get("TotalCompletions") or job.get("MaxConcurrent") or 1)
        else:
            total = len({t.get("NodeID") for t in current if t.get("NodeID")}) or 1
        return Progress(done >= total, done, total, word="completed tasks")
    if "Global" in mode:
        per_node = _pick_per_key([t for t in live if t.get("NodeID")], "NodeID")
        runnable = {k: t for k, t in per_node.items() if ORDER.get(t.get("DesiredState", ""), 99) <= ORDER["running"]}
        running = sum(_is_running(t) for t in runnable.values())
        lines = [_line(str(node_id)[:12], t) for node_id, t in sorted(runnable.items())]
        return Progress(bool(runnable) and running == len(runnable), running, len(runnable), lines)
    replicas = int((mode.get("Replicated") or {}).get("Replicas", 1))
    per_slot = _pick_per_key(live, "Slot")
    running = sum(1 for slot, t in per_slot.items() if isinstance(slot, int) and slot <= replicas and _is_running(t))
    lines = [_line(f"{slot}/{replicas}", per_slot.get(slot)) for slot in range(1, replicas + 1)]
    return Progress(running == replicas, running, replicas, lines)


def render(progress: Progress, notes: list[str]) -> Group:
    out = [Text(f"overall progress: {progress.running} out of {progress.desired} {progress.word}")]
    width = max((len(line.label) for line in progress.lines), default=0)
    for line in progress.lines[:50]:
        if line.err:
            body = line.err[:ERR_WIDTH]
        elif line.state:
            done = ORDER.get(line.state, 0) if line.state in STATES else len(STATES) - 1
            filled = int(BAR_WIDTH * (done + 1) / len(STATES))
            bar = "=" * max(filled - 1, 0) + (">" if filled < BAR_WIDTH else "=")
            body = f"{line.state:<10} [{bar:<{BAR_WIDTH}}]"
        else:
            body = ""
        out.append(Text(f"{line.label:>{width}}: {body}".rstrip()))
    if len(progress.lines) > 50:
        out.append(Text(f"... and {len(progress.lines) - 50} more"))
    out.extend(Text(note) for note in notes)
    return Group(*out)


def monitor_seconds(service: dict[str, Any]) -> float:
    raw = (service["Spec"].get("UpdateConfig") or {}).get("Monitor")
    return raw / 1e9 if raw else DEFAULT_MONITOR


async def wait_for_convergence(client: DaemonClient, service_id: str, *, timeout: float, console: Console,
                               quiet: bool = False) -> None:
    """Poll until the service converged (raises ProgressError when paused or out of time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    stable_since: float | None = None
    live = None if quiet else Live(console=console, auto_refresh=False, transient=False)
    if live is not None:
        live.start()
    try:
        while True:
            service = await client.get(f"/services/{service_id}", insertDefaults="false")
            name = service["Spec"].get("Name", service_id)
            update = service.get("UpdateStatus") or {}
            state, message = update.get("State"), update.get("Message", "")
            if state == "paused":
                raise ProgressError(f"service update paused: {message}")
            if state == "rollback_paused":
                raise ProgressError(f"service rollback paused: {message}")
            tasks = await client.get("/tasks", filters={"_up-to-date": {"true": True}, "service": {service_id: True}})
            nodes = await client.get("/nodes")
            progress = evaluate(service, tasks, nodes)
            notes = [f"rollback: {message}"] if state == "rollback_started" and message else []
            now = loop.time()
            finished = False
            if progress.converged:
                if state in ("completed", "rollback_completed"):
                    finished = True
                    if state == "rollback_completed" and message:
                        notes.append(f"rollback: {message}")
                else:
                    stable_since = now if stable_since is None else stable_since
                    remaining = monitor_seconds(service) - (now - stable_since)
                    finished = remaining <= 0
                    if not finished:
                        notes.append(f"verify: Waiting {max(1, round(remaining))} seconds to verify that tasks "
                                     "are stable...")
            else:
                stable_since = None
            if finished:
                notes.append(f"verify: Service {name} converged")
            if live is not None:
                live.update(render(progress, notes), refresh=True)
            if finished:
                return
            if now >= deadline:
                raise ProgressError(f"timed out after {timeout:g}s waiting for service {name} to converge "
                                    f"({progress.running} of {progress.desired} running)")
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        if live is not None:
            live.stop()
