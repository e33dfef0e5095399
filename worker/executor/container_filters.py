"""Which containers `GET /containers/json` (`docker ps`) lists: `all`, `limit` and the `filters`,
as dockerd applies them. Pure: the image resolver is a parameter.

Theory of operation: `ListQuery.parse` reads and checks the filters once (engineapi.filters is
the one parser), resolving what names other objects (`before`/`since` name a container, by ID,
ID prefix or name, 404 if none; `ancestor` names images, resolved to IDs, an unknown one
matching nothing; `expose`/`publish` take `PORT[/PROTO]` or `START-END[/PROTO]`). `select`
walks the containers newest first as dockerd does: containers newer than the `before` one and
that one are skipped, the walk stops at the `since` one, stopped containers are left out unless
`all`, a `status` filter or a `limit` asks for them (an `exited` filter does not: as dockerd,
`docker ps --filter exited=0` needs `-a`), then each remaining filter must match:
  - `id` and `name` are regular expressions searched in the ID and in the name (with and
    without its leading "/"); `label` is `KEY` or `KEY=VALUE`; `status` one of dockerd's states;
  - `exited` an exit code of a container that ran and stopped; `health` one of starting,
    healthy, unhealthy, none (no health check); `is-task` true or false (a swarm task's
    container or not); `isolation` matches the container's isolation ("" on Linux);
  - `volume` a mount's destination, or its volume name (its source for a bind);
  - `network` a network's name, or a prefix of its ID;
  - `expose` and `publish` a port of the container's `Ports` (private, public).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from engineapi.filters import Filters, InvalidFilter
from engineapi.http import ApiError
from worker.executor.container_view import STATUSES, ContainerView, find, summary

LIST_FILTERS = ("id", "name", "label", "status", "exited", "is-task", "ancestor", "health",
                "before", "since", "expose", "isolation", "network", "publish", "volume")
HEALTH_STATES = ("starting", "healthy", "unhealthy", "none")
TASK_ID_LABEL = "com.docker.swarm.task.id"


def _search(patterns: list[str], *sources: str) -> bool:
    """dockerd's `Match`: no pattern, an exact value, or a regular expression found in a source
    (a pattern that is not a valid expression matches only exactly)."""
    if not patterns:
        return True
    for pattern in patterns:
        for source in sources:
            if pattern == source:
                return True
            try:
                if re.search(pattern, source):
                    return True
            except re.error:
                continue
    return False


def parse_ports(key: str, values: list[str]) -> set[str]:
    """`80`, `80/udp`, `8000-8002/tcp` → {"80/tcp", ...}; 400 for what dockerd refuses."""
    out: set[str] = set()
    for value in values:
        if ":" in value:
            raise ApiError(400, f"filter for '{key}' should not contain ':': {value}")
        port, _, proto = value.partition("/")
        start, dash, end = port.partition("-")
        try:
            first, last = int(start), int(end) if dash else int(start)
            if not (0 <= first <= last <= 65535):
                raise ValueError
        except ValueError:
            raise ApiError(400, f"error while looking up for {key} {value}: invalid port range: {port}") from None
        out.update(f"{p}/{(proto or 'tcp').lower()}" for p in range(first, last + 1))
    return out


@dataclass
class ListQuery:
    filters: Filters
    show_all: bool = False
    limit: int = 0
    before: str | None = None
    since: str | None = None
    exited: list[int] = field(default_factory=list)
    is_task: bool | None = None
    ancestors: set[str] | None = None          # image IDs; None: no ancestor filter
    expose: set[str] = field(default_factory=set)
    publish: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, filters: Filters, views: list[ContainerView], *, show_all: bool = False, limit: int = 0,
              resolve_image: Callable[[str], str] = lambda ref: "") -> ListQuery:
        filters.validate(LIST_FILTERS)
        q = cls(filters, show_all=show_all, limit=max(limit, 0))
        for value in filters.get("exited", []):
            try:
                q.exited.append(int(value))
            except ValueError:
                raise ApiError(400, f"invalid filter 'exited={value}'") from None
        for value in filters.get("status", []):
            if value not in STATUSES:
                raise ApiError(400, f"invalid filter 'status={value}'")
            q.show_all = True
        if "is-task" in filters:
            if filters.exact_match("is-task", "true") and filters.get("is-task"):
                q.is_task = True
            elif filters.exact_match("is-task", "false") and filters.get("is-task"):
                q.is_task = False
            else:
                raise InvalidFilter("is-task", filters["is-task"])
        for value in filters.get("health", []):
            if value not in HEALTH_STATES:
                raise ApiError(400, f"Unrecognised filter value for health: {value}")
        for value in filters.get("before", []):
            q.before = find(views, value).id
        for value in filters.get("since", []):
            q.since = find(views, value).id
        if "ancestor" in filters:
            q.ancestors = set()
            for ref in filters["ancestor"]:
                image_id = resolve_image(ref)
                if image_id:
                    q.ancestors.add(image_id)
        q.expose = parse_ports("expose", filters.get("expose", []))
        q.publish = parse_ports("publish", filters.get("publish", []))
        return q

    def select(self, views: list[ContainerView]) -> list[ContainerView]:
        """The listed containers, newest first."""
        out: list[ContainerView] = []
        before = self.before
        for view in sorted(views, key=lambda v: v.created, reverse=True):
            if before is not None:
                if view.id == before:
                    before = None
                continue
            if self.since is not None and view.id == self.since:
                break
            if view.status != "running" and not self.show_all and self.limit <= 0:
                continue
            if self.limit > 0 and len(out) == self.limit:
                break
            if self.matches(view):
                out.append(view)
        return out

    def matches(self, view: ContainerView) -> bool:
        f = self.filters
        if not _search(f.get("name", []), "/" + view.name, view.name):
            return False
        if not _search(f.get("id", []), view.id):
            return False
        labels = view.labels
        if self.is_task is not None and self.is_task != (TASK_ID_LABEL in labels):
            return False
        for want in f.get("label", []):
            key, eq, value = want.partition("=")
            if key not in labels or (eq and labels[key] != value):
                return False
        if "isolation" in f and not _search(f["isolation"], _isolation(view)):
            return False
        if self.exited and not (view.status == "exited" and view.state.started_at
                                and view.exit_code in self.exited):
            return False
        if not _search(f.get("status", []), view.status):
            return False
        if "health" in f and not f.exact_match("health", (view.state.health or {}).get("Status") or "none"):
            return False
        if "volume" in f and not _volume_match(view, f["volume"]):
            return False
        if self.ancestors is not None and view.image_id not in self.ancestors:
            return False
        if "network" in f and not _network_match(view, f["network"]):
            return False
        if self.expose or self.publish:
            ports = summary(view)["Ports"]
            if not any(f"{p.get('PublicPort')}/{p.get('Type')}" in self.publish
                       or f"{p.get('PrivatePort')}/{p.get('Type')}" in self.expose for p in ports):
                return False
        return True


def _isolation(view: ContainerView) -> str:
    return str(((view.standalone or {}).get("HostConfig") or {}).get("Isolation") or "")


def _volume_match(view: ContainerView, values: list[str]) -> bool:
    for m in view.config.mounts:
        if m.target in values or m.source in values:      # a volume's source is its name
            return True
    return False


def _network_match(view: ContainerView, values: list[str]) -> bool:
    for net in view.config.networks:
        name, net_id = str(net.get("name") or ""), str(net.get("id") or "")
        if any(v == name or (v and net_id.startswith(v)) for v in values):
            return True
    return False
