"""Engine API: `/swarm/init`, `/swarm/join` and `/swarm/leave`.

These change what this node is (its role and membership), so they are served by the node's
composition root on every daemon, in a swarm or not; `SwarmControl` is what they drive.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from engineapi.bodykeys import SWARM_INIT, SWARM_JOIN
from engineapi.http import ApiError, Routes, json_response, query_bool, read_json
from manager.specs import SpecError, validate_swarm_spec

ALREADY_IN_SWARM = ('This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and '
                    "join another one.")
NOT_PART_OF_SWARM = "This node is not part of a swarm"
MANAGER_LEAVE = ("You are attempting to leave the swarm on a node that is participating as a manager. "
                 "Removing the last manager erases all current state of the swarm. Use `--force` to ignore "
                 "this message. ")


class SwarmControl(Protocol):
    async def init(self, request: dict[str, Any]) -> str:
        """Make this node the first manager of a new swarm; returns its node ID."""
        ...

    async def join(self, request: dict[str, Any]) -> None:
        ...

    async def leave(self, force: bool) -> None:
        ...


SWARM_CONTROL = web.AppKey("swarm_control", SwarmControl)


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, f"invalid {what} request: expected a JSON object")
    return body


async def init(request: web.Request) -> web.Response:
    body = _object(await read_json(request, SWARM_INIT), "swarm init")
    if body.get("Spec") is not None:
        try:
            validate_swarm_spec(body["Spec"])
        except SpecError as e:
            raise ApiError(400, str(e)) from None
    node_id = await request.app[SWARM_CONTROL].init(body)
    return json_response(node_id)


async def join(request: web.Request) -> web.Response:
    body = _object(await read_json(request, SWARM_JOIN), "swarm join")
    if not body.get("JoinToken"):
        raise ApiError(400, "invalid join request: JoinToken is required")
    addrs = body.get("RemoteAddrs")
    if not isinstance(addrs, list) or not addrs or not all(isinstance(a, str) and a for a in addrs):
        raise ApiError(400, "invalid join request: RemoteAddrs must list at least one manager address")
    await request.app[SWARM_CONTROL].join(body)
    return web.Response(status=200)


async def leave(request: web.Request) -> web.Response:
    await request.app[SWARM_CONTROL].leave(query_bool(request, "force"))
    return web.Response(status=200)




def add_routes(routes: Routes) -> None:
    routes.add("POST", "/swarm/init", init)
    routes.add("POST", "/swarm/join", join)
    routes.add("POST", "/swarm/leave", leave)
