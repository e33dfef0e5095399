"""Swarm events for `GET /events` on a manager: the store's changes of services, nodes, secrets,
configs and networks, as dockerd logs them (moby `daemon/events.go`, `logClusterEvent`).

Theory of operation: `to_message` (pure) turns one store event into dockerd's message: `Type`
the object kind, `Action` create/update/remove, `scope` swarm, the time the object's UpdatedAt
(its removal: now), `Actor.Attributes` its `name` plus, on an update, what dockerd reports as
changed: a service's `image`, `replicas` and `updatestate` (`.old`/`.new`), a node's
`availability`, `role`, `state` and `reachability`. Tasks and the cluster object give no event,
as in dockerd. The node records them from a store watch (node/events_api.py).
"""

from __future__ import annotations

import time
from typing import Any

from engineapi.events import Message, message
from manager.store import Event
from model import parse_time

KINDS = {"services": "service", "nodes": "node", "secrets": "secret", "configs": "config",
         "networks": "network"}
ACTIONS = {"create": "create", "update": "update", "delete": "remove"}


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _changed(attrs: dict[str, str], key: str, old: Any, new: Any) -> None:
    if old != new:
        if old is not None:
            attrs[f"{key}.old"] = str(old).lower()
        attrs[f"{key}.new"] = str(new).lower()


def _name(kind: str, doc: dict[str, Any]) -> str:
    name = _get(doc, "Spec", "Name") or doc.get("Name") or ""
    if not name and kind == "node":
        name = _get(doc, "Description", "Hostname") or ""
    return str(name)


def to_message(event: Event) -> Message | None:
    kind = KINDS.get(event.table)
    action = ACTIONS.get(event.op)
    if kind is None or action is None:
        return None
    doc = event.obj.to_api()
    attrs = {"name": _name(kind, doc)}
    if action == "update" and event.old is not None:
        old = event.old.to_api()
        if kind == "service":
            image = ("Spec", "TaskTemplate", "ContainerSpec", "Image")
            if _get(doc, *image) != _get(old, *image):
                attrs["image.old"], attrs["image.new"] = str(_get(old, *image)), str(_get(doc, *image))
            replicas = ("Spec", "Mode", "Replicated", "Replicas")
            if _get(doc, *replicas) is not None and _get(old, *replicas) is not None:
                _changed(attrs, "replicas", _get(old, *replicas), _get(doc, *replicas))
            if _get(doc, "UpdateStatus", "State") is not None:
                _changed(attrs, "updatestate", _get(old, "UpdateStatus", "State"), _get(doc, "UpdateStatus", "State"))
        elif kind == "node":
            for key, path in (("availability", ("Spec", "Availability")), ("role", ("Spec", "Role")),
                              ("state", ("Status", "State"))):
                _changed(attrs, key, _get(old, *path), _get(doc, *path))
            reach = ("ManagerStatus", "Reachability")
            if _get(doc, *reach) is not None and _get(old, *reach) is not None:
                _changed(attrs, "reachability", _get(old, *reach), _get(doc, *reach))
    at = time.time()
    if action != "remove":
        try:
            at = parse_time(str(doc.get("UpdatedAt") or doc.get("Created") or ""))
        except ValueError:
            pass
    return message(kind, action, event.obj.id, attrs, scope="swarm", at=at)
