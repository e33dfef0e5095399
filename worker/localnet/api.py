"""The Engine API of local networks: `POST /networks/{id}/connect` and `/disconnect`, and a
middleware that serves the local half of `/networks`, `/networks/create`, `/networks/{ref}` and
`/networks/prune` beside the swarm's.

Theory of operation: the swarm's network routes (manager/api/networks.py) serve overlay networks
from the cluster store. dockerd serves both scopes on the same routes, so a middleware in front
of them takes what is local: a create whose driver is bridge (dockerd's default; scope local),
an inspect or remove of a name or ID a local network (or a predefined one) answers to (unless
the request asks for `scope=swarm` or `global`; an inspect with `scope=local` finds no swarm
network); everything else goes to the swarm's handlers, and a list
or prune merges their answer (none when the node is no manager: 503) with the local one.
Connecting a container records the endpoint in the network and in the container's config
record (what `docker inspect` shows under NetworkSettings.Networks).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from engineapi.bodykeys import NETWORK_CONNECT, NETWORK_CREATE, NETWORK_DISCONNECT
from engineapi.filters import parse_filters
from engineapi.http import ApiError, Handler, Routes, json_response, read_json
from worker.localnet.networks import PREDEFINED, LocalNetworks, predefined_api, public
from worker.standalone.containers import StandaloneContainers

NETWORKS_PATH = re.compile(r"^(?:/v\d+\.\d+)?/networks(?:/(?P<rest>[^/]*))?$")
LOCAL_DRIVERS = ("bridge",)
SINGLETON_DRIVERS = ("host", "null")


async def _inner(handler: Handler, request: web.Request) -> Any:
    """The swarm's answer as JSON; None when the node has no cluster to ask (503)."""
    try:
        resp = await handler(request)
    except ApiError as e:
        if e.status == 503:
            return None
        raise
    if resp.status == 503:
        return None
    if resp.status >= 400 or not isinstance(resp, web.Response) or resp.body is None:
        raise _Passthrough(resp)
    return json.loads(bytes(resp.body))  # type: ignore[arg-type]


class _Passthrough(Exception):
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


def _list_matches(network: dict[str, Any], filters: Any) -> bool:
    if (names := filters.get("name")) and not any(n in network["Name"] for n in names):
        return False
    if (ids := filters.get("id")) and not any(network["Id"].startswith(i) for i in ids):
        return False
    if (drivers := filters.get("driver")) and network["Driver"] not in drivers:
        return False
    if (scopes := filters.get("scope")) and network["Scope"] not in scopes:
        return False
    if (types := filters.get("type")) and ("builtin" if network["Name"] in PREDEFINED else "custom") not in types:
        return False
    for want in filters.get("label", []):
        key, eq, value = want.partition("=")
        labels = network.get("Labels") or {}
        if key not in labels or (eq and labels[key] != value):
            return False
    if "dangling" in filters and filters.bool_value("dangling", False) != (not network.get("Containers")):
        return False
    return True


def middleware(networks: LocalNetworks) -> Any:
    @web.middleware
    async def local_networks(request: web.Request, handler: Handler) -> web.StreamResponse:
        match = NETWORKS_PATH.match(request.path)
        if match is None:
            return await handler(request)
        rest = unquote(match.group("rest") or "")
        try:
            if request.method == "POST" and rest == "create":
                return await create(request, handler)
            if request.method == "GET" and rest == "":
                return await list_all(request, handler)
            if request.method == "POST" and rest == "prune":
                return await prune(request, handler)
            scope = request.query.get("scope", "")
            if rest and request.method in ("GET", "DELETE") and scope not in ("swarm", "global"):
                found = networks.find(rest)
                if found is None and scope == "local" and request.method == "GET":
                    raise ApiError(404, f"network {rest} not found")
                if found is not None:
                    if request.method == "GET":
                        return json_response(public(found, detailed=True))
                    await networks.remove(rest)
                    return web.Response(status=204)
        except _Passthrough as e:
            return e.response
        return await handler(request)

    async def create(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await read_json(request, NETWORK_CREATE)
        if not isinstance(body, dict):
            return await handler(request)
        driver = body.get("Driver") or "bridge"
        if driver in SINGLETON_DRIVERS:
            raise ApiError(403, f'only one instance of "{driver}" network is allowed')
        if driver not in LOCAL_DRIVERS or (body.get("Scope") or "local") != "local":
            return await handler(request)
        network_id = await networks.create(body)
        return json_response({"Id": network_id, "Warning": ""}, status=201)

    async def list_all(request: web.Request, handler: Handler) -> web.StreamResponse:
        swarm = await _inner(handler, request) or []
        filters = parse_filters(request.query.get("filters"))
        local = [public(r, detailed=False) for r in networks.records()] + [predefined_api(n) for n in PREDEFINED]
        known = {n.get("Id") for n in swarm}
        return json_response(swarm + [n for n in local if n["Id"] not in known and _list_matches(n, filters)])

    async def prune(request: web.Request, handler: Handler) -> web.StreamResponse:
        swarm = await _inner(handler, request) or {}
        filters = parse_filters(request.query.get("filters"))
        labels = filters.get("label", []) + [w.replace("=", "!=", 1) if "=" in w else w + "!="
                                             for w in filters.get("label!", [])]
        until = None
        if until_values := filters.get("until") or []:
            try:
                until = float(until_values[-1])
            except ValueError:
                until = time.time()       # the swarm's handler has parsed (and checked) the duration
        deleted = (swarm.get("NetworksDeleted") or []) + await networks.prune(until, labels)
        return json_response({"NetworksDeleted": deleted or None})

    return local_networks


def add_routes(app: web.Application, routes: Routes, networks: LocalNetworks,
               standalone: StandaloneContainers) -> None:
    containers = standalone.containers
    app.middlewares.append(middleware(networks))

    async def start_dns(_: web.Application) -> None:      # the embedded DNS of user-defined networks
        await networks.start_dns()

    async def close_dns(_: web.Application) -> None:
        await networks.close_dns()

    app.on_startup.append(start_dns)
    app.on_cleanup.append(close_dns)

    async def connect(request: web.Request) -> web.Response:
        body = await read_json(request, NETWORK_CONNECT)
        if not isinstance(body, dict) or not isinstance(body.get("Container"), str):
            raise ApiError(400, "Container is required")
        view, ctl = await containers.get(body["Container"])
        if view.standalone is None:
            raise ApiError(403, f"container {view.name} is a swarm task's container: its networks are its "
                                "service's")
        entry = await networks.connect(request.match_info["id"], view.id, view.name, body.get("EndpointConfig") or {})
        resolv = entry.pop("resolv_conf", "")
        if resolv:          # a swarm overlay: its names resolve through the embedded DNS from now on
            await asyncio.to_thread((ctl.paths.etc / "resolv.conf").write_text, resolv)
            await standalone.rewrite_config(ctl, networks=[*ctl.config.networks, entry], resolv_conf=resolv)
        else:
            await standalone.rewrite_config(ctl, networks=[*ctl.config.networks, entry])
        return web.Response(status=200)

    async def disconnect(request: web.Request) -> web.Response:
        body = await read_json(request, NETWORK_DISCONNECT)
        if not isinstance(body, dict) or not isinstance(body.get("Container"), str):
            raise ApiError(400, "Container is required")
        view, ctl = await containers.get(body["Container"])
        record = await networks.disconnect(request.match_info["id"], view.id)
        await standalone.rewrite_config(ctl, networks=[n for n in ctl.config.networks if n.get("id") != record["Id"]])
        return web.Response(status=200)

    routes.add("POST", "/networks/{id}/connect", connect)
    routes.add("POST", "/networks/{id}/disconnect", disconnect)
