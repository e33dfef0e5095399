"""A systematic companion of the property tests in test_spec_normalisers.py: in a valid body of
each kind, every known field (engineapi/bodykeys.py), at every depth, is set to a value of every
JSON type in turn. Each body must be refused with a 4xx error, or stored with every field of
Docker's type. Random generation rarely puts a wrong type that deep; this sweep always does.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from engineapi.bodykeys import (
    CONFIG_SPEC,
    NETWORK_CREATE,
    NODE_SPEC,
    SECRET_SPEC,
    SERVICE_SPEC,
    SWARM_SPEC,
    ListOf,
    MapOf,
    Obj,
    Shape,
)
from engineapi.http import ApiError
from manager.allocator import needs_ingress, plan_network
from manager.allocator.ipam import IpamError
from manager.allocator.ports import port_conflict
from manager.api.networks import _check_create, _stored_spec
from manager.api.secrets import _stored
from manager.api.services import resolve_references
from manager.specs import (
    SpecError,
    check_secret_update,
    insert_service_defaults,
    normalize_service_spec,
    normalize_swarm_spec,
    placement_constraints,
    restart_policy,
    update_config,
    validate_config_spec,
    validate_network_create,
    validate_node_spec,
    validate_secret_spec,
    validate_service_spec,
    validate_swarm_spec,
)
from model import Network, Service
from tests.fuzz.test_spec_normalisers import NoObjects, ill_typed

ODD_VALUES = [5, -1, 1.5, "x", "", True, {}, [], [1], {"a": 1}, None, 2**70]
Path = tuple[str | int, ...]


def field_paths(shape: Shape, prefix: Path = ()) -> Iterator[Path]:
    """Every known field of `shape`, lists at index 0, and one user key of each map."""
    if isinstance(shape, Obj):
        for key, sub in shape.fields.items():
            yield (*prefix, key)
            yield from field_paths(sub, (*prefix, key))
    elif isinstance(shape, ListOf):
        yield from field_paths(shape.item, (*prefix, 0))
    elif isinstance(shape, MapOf):
        yield (*prefix, "some-key")


def put(body: Any, path: Path, value: Any) -> Any:
    """`body` with `value` at `path`, making the objects and lists on the way."""
    here = body
    for step, following in itertools.pairwise(path):
        if isinstance(here, list):
            assert isinstance(step, int)
            here.extend([None] * (step + 1 - len(here)))
            inner = here[step]
        else:
            inner = here.get(step)
        if not isinstance(inner, dict | list):
            inner = here[step] = [] if isinstance(following, int) else {}
        here = inner
    last = path[-1]
    if isinstance(here, list):
        assert isinstance(last, int)
        here.extend([None] * (last + 1 - len(here)))
    here[last] = value
    return body


def store_service(spec: Any) -> Any:
    validate_service_spec(spec)
    stored = normalize_service_spec(spec, lambda target: target)
    resolve_references(NoObjects(), copy.deepcopy(stored))   # type: ignore[arg-type]
    service = Service(id="s", spec=stored)
    _ = service.mode, service.replicas
    port_conflict(stored, [], "")
    needs_ingress(service)
    restart_policy(stored["TaskTemplate"])
    update_config(stored)
    update_config(stored, rollback=True)
    placement_constraints(stored["TaskTemplate"])
    insert_service_defaults(stored)
    validate_service_spec(stored)
    return stored


def store_swarm(spec: Any) -> Any:
    validate_swarm_spec(spec)
    stored = normalize_swarm_spec(spec or None)
    validate_swarm_spec(stored)
    return stored


def store_network(spec: Any) -> Any:
    validate_network_create(spec)
    _check_create(spec)
    stored = _stored_spec(spec)
    plan_network(Network(id="n", spec=stored), [], ["10.0.0.0/8"], 24)
    return stored


def store_secret(spec: Any) -> Any:
    validate_secret_spec(spec)
    stored = _stored(spec)
    check_secret_update(stored, spec, "secret")
    return stored


def store_config(spec: Any) -> Any:
    validate_config_spec(spec)
    return _stored(spec)


def store_node(spec: Any) -> Any:
    validate_node_spec(spec)
    return spec


KINDS: dict[str, tuple[Shape, Callable[[Any], Any], dict[str, Any]]] = {
    "service": (SERVICE_SPEC, store_service, {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}}),
    "swarm": (SWARM_SPEC, store_swarm, {}),
    "network": (NETWORK_CREATE, store_network, {"Name": "n", "IPAM": {"Config": [{"Subnet": "10.9.0.0/24"}]}}),
    "secret": (SECRET_SPEC, store_secret, {"Name": "s", "Data": "aGk="}),
    "config": (CONFIG_SPEC, store_config, {"Name": "c", "Data": "aGk="}),
    "node": (NODE_SPEC, store_node, {"Role": "manager"}),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_field_with_every_json_type(kind: str) -> None:
    shape, store, base = KINDS[kind]
    assert store(copy.deepcopy(base)) is not None       # the base itself is stored
    problems, tried = [], 0
    for path in field_paths(shape):
        for value in ODD_VALUES:
            tried += 1
            try:
                stored = store(put(copy.deepcopy(base), path, value))
            except (SpecError, IpamError):
                continue
            except ApiError as exc:
                if 400 <= exc.status < 500:
                    continue
                problems.append(f"{path} = {value!r}: {exc.status} {exc.message}")
            except Exception as exc:
                problems.append(f"{path} = {value!r}: {type(exc).__name__}: {exc}")
            else:
                problems += [f"{path} = {value!r}: stored as {where}" for where in ill_typed(stored, shape)]
    assert tried > 50
    assert problems == []
