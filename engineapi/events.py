"""Engine API events (`GET /events`, `docker events`): the message shape, dockerd's filters, and a
bus that fans a node's events out to its subscribers.

Theory of operation: an event is dockerd's `events.Message` as JSON: `Type` (container, service,
node, secret, config, network, ...), `Action` (create, start, die, update, remove, ...), `Actor`
`{ID, Attributes}`, `scope` (local or swarm), `time` and `timeNano`; container events also carry
the legacy `status`, `id` and `from`. `EventBus.publish` keeps the last `HISTORY` events, a node's
container events and, on a manager, the swarm's together (what a `since` in the past replays,
as dockerd's event log does with its last 256) and hands each one to every
subscriber's bounded queue; a subscriber that lags `QUEUE_LIMIT` events behind is dropped (its
stream ends) rather than holding the publisher up. `subscribe` returns the history and the new
subscription atomically, so nothing falls between them. `include` is dockerd's filter
(`daemon/events/filter.go`): every key given must match; `container`, `service`, `node`, ...
match the actor's ID or name by prefix, and exclude events of other types.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from engineapi.filters import Filters

HISTORY = 1024          # events kept for a `since` in the past (dockerd keeps 256)
QUEUE_LIMIT = 1024
FILTER_KEYS = ("config", "container", "daemon", "event", "image", "label", "network", "node",
               "plugin", "scope", "secret", "service", "type", "volume")
FUZZY_ACTIONS = ("health_status", "exec_create", "exec_start")

Message = dict[str, Any]


def message(type_: str, action: str, actor_id: str, attributes: dict[str, str], *,
            scope: str = "local", at: float | None = None) -> Message:
    """One event; `at` is Unix seconds (now when omitted)."""
    nanos = int((time.time() if at is None else at) * 1e9)
    msg: Message = {"Type": type_, "Action": action, "Actor": {"ID": actor_id, "Attributes": attributes},
                    "scope": scope, "time": nanos // 1_000_000_000, "timeNano": nanos}
    if type_ == "container":
        msg = {"status": action, "id": actor_id, "from": attributes.get("image", ""), **msg}
    return msg


def _fuzzy(filters: Filters, key: str, *sources: str) -> bool:
    values = filters.get(key)
    if not values:
        return True
    return any(s and (s == v or s.startswith(v)) for v in values for s in sources)


def include(filters: Filters, msg: Message) -> bool:
    """dockerd's `Filter.Include`."""
    action, type_ = str(msg.get("Action", "")), str(msg.get("Type", ""))
    actor_id = str(msg["Actor"]["ID"])
    attrs: dict[str, str] = msg["Actor"]["Attributes"]
    name = attrs.get("name", "")
    if (events := filters.get("event")):
        if any(e in FUZZY_ACTIONS for e in events):
            if not any(action == e or action.startswith(e) for e in events):
                return False
        elif not filters.exact_match("event", action):
            return False
    if not filters.exact_match("type", type_) or not filters.exact_match("scope", str(msg.get("scope", ""))):
        return False
    for key in ("container", "service", "node", "secret", "config", "network", "volume", "plugin"):
        if key in filters and not (type_ == key and _fuzzy(filters, key, actor_id, name)):
            return False
    if "image" in filters:
        image = actor_id if type_ == "image" else attrs.get("image", "")
        if type_ not in ("image", "container") or not _fuzzy(filters, "image", image):
            return False
    if "daemon" in filters and type_ != "daemon":
        return False
    for want in filters.get("label", []):
        key, eq, value = want.partition("=")
        if key not in attrs or (eq and attrs[key] != value):
            return False
    return True


class Subscriber:
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._queue: deque[Message] = deque()
        self._wakeup = asyncio.Event()
        self.dropped = False

    def offer(self, msg: Message) -> None:
        if self.dropped:
            return
        if len(self._queue) >= QUEUE_LIMIT:
            self.dropped = True
            self._queue.clear()
        else:
            self._queue.append(msg)
        self._wakeup.set()

    async def next(self) -> Message | None:
        """The next event; None once this subscriber was dropped for lagging."""
        while not self._queue and not self.dropped:
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        self._bus._subscribers.discard(self)


class EventBus:
    def __init__(self) -> None:
        self._history: deque[Message] = deque(maxlen=HISTORY)
        self._subscribers: set[Subscriber] = set()

    def publish(self, msg: Message) -> None:
        self._history.append(msg)
        for sub in list(self._subscribers):
            sub.offer(msg)

    def subscribe(self) -> tuple[list[Message], Subscriber]:
        sub = Subscriber(self)
        self._subscribers.add(sub)
        return list(self._history), sub
