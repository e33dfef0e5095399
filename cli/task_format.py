"""Table text for `shoal service ls/ps` and friends (pure: takes API objects and `now`).

Columns are padded like a tab writer (three spaces between columns), so output reads the same
in a terminal and in a pipe. Times are shown as "Running 5 seconds ago".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engineapi.units import human_duration
from model import parse_time

ERR_WIDTH = 30


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def strip_digest(image: str) -> str:
    return image.split("@", 1)[0]


def format_ports(ports: list[dict[str, Any]] | None) -> str:
    out = []
    for p in ports or []:
        published = p.get("PublishedPort")
        target = f"{p.get('TargetPort')}/{p.get('Protocol', 'tcp')}"
        out.append(f"*:{published}->{target}" if published else target)
    return ", ".join(out)


def service_ports(ports: list[dict[str, Any]] | None) -> str:
    """The PORTS column of `service ls`, as the docker CLI builds it (cli/command/service/
    formatter.go): `Endpoint.Ports` in ingress mode, sorted by protocol then published port, with
    runs of consecutive target ports joined (`*:8080-8081->80-81/tcp`)."""
    ranges: list[str] = []
    pr: dict[str, Any] = {"pStart": 0, "pEnd": 0, "tStart": 0, "tEnd": 0, "protocol": ""}

    def text(r: dict[str, Any]) -> str:
        pub = f"{r['pStart']}-{r['pEnd']}" if r["pEnd"] > r["pStart"] else str(r["pStart"])
        tgt = f"{r['tStart']}-{r['tEnd']}" if r["tEnd"] > r["tStart"] else str(r["tStart"])
        return f"*:{pub}->{tgt}/{r['protocol']}"

    ordered = sorted(ports or [], key=lambda p: (str(p.get("Protocol") or ""), int(p.get("PublishedPort") or 0)))
    for p in ordered:
        if p.get("PublishMode") != "ingress":
            continue
        published, target, protocol = int(p.get("PublishedPort") or 0), int(p.get("TargetPort") or 0), \
            str(p.get("Protocol") or "")
        is_range = pr["tEnd"] != pr["tStart"]
        overlaps = target <= pr["tEnd"]
        if protocol != pr["protocol"] or (target - pr["tEnd"]) % (1 << 32) > 1 or (is_range and overlaps):
            if pr["pStart"] > 0:
                ranges.append(text(pr))
            pr = {"pStart": published, "pEnd": published, "tStart": target, "tEnd": target, "protocol": protocol}
            continue
        pr["pEnd"], pr["tEnd"] = published, target
    if pr["pStart"] > 0:
        ranges.append(text(pr))
    return ", ".join(ranges)


def service_replicas(service: dict[str, Any]) -> str:
    status = service.get("ServiceStatus") or {}
    running, desired = status.get("RunningTasks", 0), status.get("DesiredTasks", 0)
    mode = service["Spec"].get("Mode") or {}
    if "ReplicatedJob" in mode:
        total = mode["ReplicatedJob"].get("TotalCompletions") or mode["ReplicatedJob"].get("MaxConcurrent") or 1
        return f"{running}/{desired} ({status.get('CompletedTasks', 0)}/{total} completed)"
    if "GlobalJob" in mode:
        return f"{running}/{desired} ({status.get('CompletedTasks', 0)}/{desired} completed)"
    return f"{running}/{desired}"


def service_mode(service: dict[str, Any]) -> str:
    mode = service["Spec"].get("Mode") or {}
    for key, word in (("Global", "global"), ("ReplicatedJob", "replicated job"), ("GlobalJob", "global job")):
        if key in mode:
            return word
    return "replicated"


def service_rows(services: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for s in sorted(services, key=lambda s: s["Spec"].get("Name", "")):
        image = s["Spec"]["TaskTemplate"].get("ContainerSpec", {}).get("Image", "")
        rows.append([s["ID"][:12], s["Spec"].get("Name", ""), service_mode(s), service_replicas(s),
                     strip_digest(image), service_ports((s.get("Endpoint") or {}).get("Ports"))])
    return rows


def _state_since(task: dict[str, Any], now: float) -> str:
    status = task.get("Status") or {}
    state = str(status.get("State", "")).capitalize()
    stamp = status.get("Timestamp")
    if not stamp:
        return state
    try:
        ago = max(0.0, now - parse_time(stamp))
    except ValueError:
        return state
    return f"{state} {human_duration(ago).lower()} ago"      # "Running about a minute ago", as docker


def task_rows(tasks: list[dict[str, Any]], service_names: dict[str, str], node_names: dict[str, str],
              now: float, no_trunc: bool = False) -> list[list[str]]:
    """`service ps` rows: grouped by slot, newest first; older tasks of a slot shown as ` \\_ `."""

    def slot_name(t: dict[str, Any]) -> str:
        service = service_names.get(t.get("ServiceID", ""), t.get("ServiceID", "")[:12])
        return f"{service}.{t.get('Slot') or t.get('NodeID', '')}"

    ordered = sorted(tasks, key=lambda t: (slot_name(t), _neg_time(t.get("CreatedAt", ""))))
    rows, previous = [], None
    for t in ordered:
        name = slot_name(t)
        shown = name if name != previous else f" \\_ {name}"
        previous = name
        image = ((t.get("Spec") or {}).get("ContainerSpec") or {}).get("Image", "")
        err = (t.get("Status") or {}).get("Err", "")
        if err and not no_trunc and len(err) > ERR_WIDTH:
            err = err[:ERR_WIDTH - 1] + "…"
        if err:
            err = f'"{err}"'
        ports = ((t.get("Status") or {}).get("PortStatus") or {}).get("Ports")
        rows.append([t["ID"] if no_trunc else t["ID"][:12], shown, image if no_trunc else strip_digest(image),
                     node_names.get(t.get("NodeID", ""), t.get("NodeID", "")),
                     str(t.get("DesiredState", "")).capitalize(), _state_since(t, now), err, format_ports(ports)])
    return rows


def _neg_time(stamp: str) -> float:
    try:
        return -parse_time(stamp)
    except ValueError:
        return 0.0


TASK_HEADERS = ("ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS")
SERVICE_HEADERS = ("ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS")
