"""Engine API handlers for secrets, and the shared implementation configs reuse.

Theory of operation: secrets and configs are named blobs services refer to by ID. Create
validates the spec (base64 Data, a DNS-safe name) and stores it; names are unique through the
store's name index (409). Update may change only Labels (the version must match). Remove
refuses while a service refers to the object. A secret's Data is never returned; a config's is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engineapi.bodykeys import CONFIG_SPEC, SECRET_SPEC, Shape
from engineapi.filters import request_filters
from engineapi.http import Routes, json_response, read_json
from manager.api.cluster import cluster_store, require_version, write
from manager.api.objects_common import (
    any_prefix,
    api_errors,
    exact_any,
    labels_match,
    lookup,
    require_spec_object,
)
from manager.specs import SpecError, check_secret_update, validate_config_spec, validate_secret_spec
from manager.specs.checks import drop_nulls
from manager.store import ReadTx, StaleVersion, WriteTx
from model import Config, Secret, Service, StoreObject, new_id


@dataclass(frozen=True)
class BlobKind:
    """What differs between secrets and configs."""

    table: str  # "secrets" | "configs"
    word: str  # "secret" | "config"
    make: Callable[..., StoreObject]
    validate: Callable[[Any], None]
    ref_key: str  # the ContainerSpec list that refers to it: "Secrets" | "Configs"
    id_key: str  # "SecretID" | "ConfigID"
    keys: Shape  # the spec's keys, as Docker spells them

    def users(self, tx: ReadTx, obj_id: str) -> list[str]:
        """Names of the services that refer to the object."""
        services: list[Service] = tx.all("services")
        return sorted(s.name for s in services
                      if any(ref.get(self.id_key) == obj_id for ref in
                             (s.spec["TaskTemplate"].get("ContainerSpec") or {}).get(self.ref_key) or []))


SECRETS = BlobKind("secrets", "secret", Secret, validate_secret_spec, "Secrets", "SecretID", SECRET_SPEC)
CONFIGS = BlobKind("configs", "config", Config, validate_config_spec, "Configs", "ConfigID", CONFIG_SPEC)
FILTERS = {"id", "name", "names", "label"}


def _stored(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = drop_nulls(copy.deepcopy(spec))
    out.setdefault("Labels", {})
    return out


def handlers(kind: BlobKind) -> dict[str, Callable[[web.Request], Any]]:
    async def create(request: web.Request) -> web.Response:
        store = cluster_store(request)
        body = require_spec_object(await read_json(request, kind.keys), f"{kind.word.capitalize()}Spec")
        with api_errors():
            kind.validate(body)
            spec = _stored(body)

            def change(tx: WriteTx) -> str:
                obj = kind.make(id=new_id(), spec=spec)
                tx.create(obj)
                return obj.id

            obj_id = await write(store, change)
        return json_response({"ID": obj_id}, status=201)

    async def list_all(request: web.Request) -> web.Response:
        store = cluster_store(request)
        filters = request_filters(request, FILTERS)

        def select(tx: ReadTx) -> list[dict[str, Any]]:
            objs: list[StoreObject] = tx.all(kind.table)
            return [o.to_api() for o in sorted(objs, key=lambda o: o.created_at)
                    if any_prefix(filters.get("id"), o.id) and any_prefix(filters.get("name"), o.name)
                    and exact_any(filters.get("names"), o.name)
                    and labels_match(filters.get("label"), o.spec.get("Labels"))]

        return json_response(store.view(select))

    async def inspect(request: web.Request) -> web.Response:
        store = cluster_store(request)
        with api_errors():
            obj: StoreObject = store.view(lambda tx: lookup(tx, kind.table, request.match_info["ref"]))
        return json_response(obj.to_api())

    async def update(request: web.Request) -> web.Response:
        store = cluster_store(request)
        version = require_version(request)
        body = require_spec_object(await read_json(request, kind.keys), f"{kind.word.capitalize()}Spec")
        with api_errors():

            def change(tx: WriteTx) -> None:
                obj: StoreObject = lookup(tx, kind.table, request.match_info["ref"]).copy()
                if obj.version != version:
                    raise StaleVersion(f"{kind.word} {obj.id}: version {version}, stored {obj.version}")
                old = obj.spec if body.get("Data") is not None else \
                    {k: v for k, v in obj.spec.items() if k != "Data"}
                check_secret_update(old, body, kind.word)
                labels = body.get("Labels") or {}
                if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                    raise SpecError(f"invalid {kind.word.capitalize()}Spec.Labels: expected a map of strings")
                obj.spec = {**obj.spec, "Labels": labels}
                tx.update(obj)

            await write(store, change)
        return web.Response(status=200)

    async def remove(request: web.Request) -> web.Response:
        store = cluster_store(request)
        with api_errors():

            def change(tx: WriteTx) -> None:
                obj: StoreObject = lookup(tx, kind.table, request.match_info["ref"])
                users = kind.users(tx, obj.id)
                if users:
                    plural = "s" if len(users) > 1 else ""
                    raise SpecError(f"rpc error: code = InvalidArgument desc = {kind.word} '{obj.name}' is in "
                                    f"use by the following service{plural}: {', '.join(users)}")
                tx.delete(kind.table, obj.id)

            await write(store, change)
        return web.Response(status=204)

    return {"create": create, "list": list_all, "inspect": inspect, "update": update, "remove": remove}


def add_kind_routes(routes: Routes, kind: BlobKind) -> None:
    h = handlers(kind)
    base = f"/{kind.table}"
    routes.add("POST", f"{base}/create", h["create"])
    routes.add("GET", base, h["list"])
    routes.add("GET", f"{base}/{{ref}}", h["inspect"])
    routes.add("POST", f"{base}/{{ref}}/update", h["update"])
    routes.add("DELETE", f"{base}/{{ref}}", h["remove"])


def add_routes(routes: Routes) -> None:
    add_kind_routes(routes, SECRETS)
