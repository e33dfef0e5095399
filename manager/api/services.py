"""Engine API handlers for services: create, list, inspect, update (and rollback), remove.

Theory of operation: each handler parses and validates the request (400 naming the field),
then makes one store transaction. The stored spec is the normalised spec (manager/specs): nulls
dropped, server defaults filled, network names resolved to IDs. An update replaces the whole
spec, keeps the one it replaced as PreviousSpec, and clears UpdateStatus (the updater sets it
when it starts rolling out); `rollback=previous` swaps Spec and PreviousSpec and marks the
status rollback_started. The caller's `version` must equal the stored version or the write
fails with "update out of sequence" (no retry: the client must re-read). Published ports are
checked against every other service in the same transaction (Docker's texts, 400), so two
writers cannot both take one port; the allocator assigns them (and the VIPs) afterwards and
writes `Endpoint`, whose `Spec` the API keeps a copy of the spec's EndpointSpec. Create and update
answer once that second write is in the store (or cannot be made, or a bound passed:
manager/allocator/endpoints.py), so the version a client reads next is the one it can update
with; a service with no network and no published port is answered at once, and so is every
service when the cluster access says no allocator writes into the store. Removing a service
deletes it and, in the same transaction, marks every task of it for removal; the worker stops
them and the task reaper deletes them.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from engineapi.bodykeys import SERVICE_SPEC
from engineapi.filters import request_filters
from engineapi.http import ApiError, Routes, go_bool, json_response, read_json
from manager.allocator import find_ingress, needs_ingress, wait_for_endpoint
from manager.allocator.ports import port_conflict
from manager.api.cluster import CLUSTER, cluster_store, require_version, write
from manager.api.objects_common import any_prefix, api_errors, labels_match, lookup, require_spec_object
from manager.api.tasks import service_status
from manager.orchestrator.jobs import JOB_MODES
from manager.specs import (
    INVALID_ARGUMENT,
    SpecError,
    insert_service_defaults,
    normalize_service_spec,
    validate_service_spec,
)
from manager.store import ReadTx, StaleVersion, Store, WriteTx
from model import Network, Service, Task, TaskState, UpdateState, new_id

SERVICE_FILTERS = {"id", "name", "label", "mode", "runtime"}


# -- resolving references inside a spec ---------------------------------------------------------
def resolve_network(tx: ReadTx, target: str) -> str:
    network: Network = lookup(tx, "networks", target)
    if network.spec.get("Ingress"):
        raise SpecError(f"rpc error: code = InvalidArgument desc = service cannot be explicitly attached "
                        f"to the ingress network \"{network.name}\"")
    return network.id


def resolve_references(tx: ReadTx, spec: dict[str, Any]) -> None:
    """Fill in and check the SecretID/ConfigID of every secret and config reference."""
    container = spec["TaskTemplate"].get("ContainerSpec") or {}
    for key, table, id_key, name_key in (("Secrets", "secrets", "SecretID", "SecretName"),
                                         ("Configs", "configs", "ConfigID", "ConfigName")):
        kind = table[:-1]
        for i, ref in enumerate(container.get(key) or []):
            path = f"TaskTemplate.ContainerSpec.{key}[{i}]"
            if not isinstance(ref, dict):
                raise SpecError(f"invalid {path}: expected an object")
            obj = tx.get(table, ref.get(id_key) or "") if ref.get(id_key) else None
            if obj is None and ref.get(name_key):
                found = tx.find(table, name=ref[name_key])
                obj = found[0] if len(found) == 1 else None
            if obj is None:
                shown = ref.get(id_key) or ref.get(name_key) or ""
                raise SpecError(f"rpc error: code = InvalidArgument desc = {kind} not found: {shown} "
                                f"(in {path})")
            ref[id_key] = obj.id
            ref.setdefault(name_key, obj.name)


def stored_spec(tx: ReadTx, body: dict[str, Any]) -> dict[str, Any]:
    spec = normalize_service_spec(body, lambda target: resolve_network(tx, target))
    resolve_references(tx, spec)
    return spec


def check_ports(tx: ReadTx, spec: dict[str, Any], service_id: str = "") -> None:
    """No other service may hold a port the spec publishes (swarmkit's checkPortConflicts), and
    an ingress-mode port needs the ingress network (or the service's tasks could never be
    reached through the routing mesh)."""
    reason = port_conflict(spec, tx.all("services"), service_id)
    if reason is not None:
        raise SpecError(INVALID_ARGUMENT + reason)
    if needs_ingress(Service(id="", spec=spec)) and find_ingress(tx.all("networks")) is None:
        raise SpecError("rpc error: code = FailedPrecondition desc = service needs ingress network, "
                        "but no ingress network is present")


def endpoint_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`Endpoint.Spec`: a copy of the spec's EndpointSpec ({} when there is none)."""
    return copy.deepcopy(spec.get("EndpointSpec") or {})


def _mode_kind(spec: dict[str, Any]) -> str:
    return Service(id="", spec=spec).mode


def _job_status(now: str, index: int) -> dict[str, Any]:
    return {"JobIteration": {"Index": index}, "LastExecution": now}


async def settle_endpoint(request: web.Request, store: Store, service_id: str) -> None:
    """Return once the allocator wrote the service's Endpoint (or cannot, or the bound passed);
    at once when the cluster access says no allocator writes into the store."""
    if request.app[CLUSTER].allocator_writes():
        await wait_for_endpoint(store, service_id)


# -- handlers -------------------------------------------------------------------------------------
async def create_service(request: web.Request) -> web.Response:
    store = cluster_store(request)
    body = require_spec_object(await read_json(request, SERVICE_SPEC), "ServiceSpec")
    with api_errors():
        validate_service_spec(body)

        def create(tx: WriteTx) -> str:
            spec = stored_spec(tx, body)
            check_ports(tx, spec)
            service = Service(id=new_id(), spec=spec, endpoint={"Spec": endpoint_spec(spec)})
            if service.mode in JOB_MODES:
                service.job_status = _job_status(tx.now, 0)
            tx.create(service)
            return service.id

        service_id = await write(store, create)
    await settle_endpoint(request, store, service_id)
    return json_response({"ID": service_id, "Warnings": None}, status=201)


def _service_api(service: Service, insert_defaults: bool) -> dict[str, Any]:
    out = service.to_api()
    if insert_defaults:
        out["Spec"] = insert_service_defaults(service.spec)
        if service.previous_spec is not None:
            out["PreviousSpec"] = insert_service_defaults(service.previous_spec)
    return out


async def list_services(request: web.Request) -> web.Response:
    store = cluster_store(request)
    filters = request_filters(request, SERVICE_FILTERS)
    with_status = go_bool(request, "status")
    for mode in filters.get("mode") or []:
        if mode not in ("replicated", "global", "replicated-job", "global-job"):
            raise ApiError(400, f"Invalid filter: 'mode'='{mode}'")

    def select(tx: ReadTx) -> list[dict[str, Any]]:
        out = []
        services: list[Service] = tx.all("services")
        for service in sorted(services, key=lambda s: s.created_at):
            if not (any_prefix(filters.get("id"), service.id) and any_prefix(filters.get("name"), service.name)
                    and labels_match(filters.get("label"), service.spec.get("Labels"))
                    and filters.exact_match("mode", service.mode)
                    and (not filters.get("runtime") or service.spec["TaskTemplate"].get("Runtime")
                         in filters["runtime"])):
                continue
            item = _service_api(service, insert_defaults=False)
            if with_status:
                item["ServiceStatus"] = service_status(tx, service)
            out.append(item)
        return out

    return json_response(store.view(select))


async def inspect_service(request: web.Request) -> web.Response:
    store = cluster_store(request)
    insert_defaults = go_bool(request, "insertDefaults")
    with api_errors():
        service = store.view(lambda tx: lookup(tx, "services", request.match_info["ref"]))
    return json_response(_service_api(service, insert_defaults))


async def update_service(request: web.Request) -> web.Response:
    store = cluster_store(request)
    version = require_version(request)
    rollback = request.query.get("rollback", "")
    if rollback not in ("", "none", "previous"):
        raise ApiError(400, f"invalid rollback value {rollback!r}: expected \"previous\" or \"none\"")
    body = require_spec_object(await read_json(request, SERVICE_SPEC), "ServiceSpec")
    ref = request.match_info["ref"]
    with api_errors():
        if rollback != "previous":
            validate_service_spec(body)

        def update(tx: WriteTx) -> str:
            service: Service = lookup(tx, "services", ref).copy()
            if service.version != version:
                raise StaleVersion(f"service {service.id}: version {version}, stored {service.version}")
            current = service.spec
            if rollback == "previous":
                if service.previous_spec is None:
                    raise SpecError(f"rpc error: code = FailedPrecondition desc = service {service.id} "
                                    "does not have a previous spec")
                service.spec, service.previous_spec = service.previous_spec, current
                # Legal from every update state (model/update_state.py), as in swarmkit.
                service.set_update_status(UpdateState.ROLLBACK_STARTED, "manually requested rollback",
                                          started_at=tx.now)
            else:
                new_spec = stored_spec(tx, body)
                if new_spec.get("Name", "") != current.get("Name", ""):
                    raise SpecError("rpc error: code = Unimplemented desc = renaming services is not supported")
                if _mode_kind(new_spec) != service.mode:
                    raise SpecError("rpc error: code = InvalidArgument desc = service mode change is not allowed")
                service.previous_spec, service.spec = current, new_spec
                service.clear_update_status()
            check_ports(tx, service.spec, service.id)
            service.endpoint = {**service.endpoint, "Spec": endpoint_spec(service.spec)}
            if service.mode in JOB_MODES:
                last = ((service.job_status or {}).get("JobIteration") or {}).get("Index", 0)
                service.job_status = _job_status(tx.now, int(last) + 1)
            tx.update(service)
            return service.id

        service_id = await write(store, update)
    await settle_endpoint(request, store, service_id)
    return json_response({"Warnings": None})


async def remove_service(request: web.Request) -> web.Response:
    store = cluster_store(request)
    ref = request.match_info["ref"]
    with api_errors():

        def remove(tx: WriteTx) -> None:
            service: Service = lookup(tx, "services", ref)
            tx.delete("services", service.id)
            task: Task
            for task in tx.find("tasks", service_id=service.id):
                if task.desired_state < TaskState.REMOVE:
                    doomed = task.copy()
                    doomed.set_desired_state(TaskState.REMOVE)
                    tx.update(doomed)

        await write(store, remove)
    return web.Response(status=200)


def add_routes(routes: Routes) -> None:
    routes.add("POST", "/services/create", create_service)
    routes.add("GET", "/services", list_services)
    routes.add("GET", "/services/{ref}", inspect_service)
    routes.add("POST", "/services/{ref}/update", update_service)
    routes.add("DELETE", "/services/{ref}", remove_service)
