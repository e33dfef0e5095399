"""Property tests of the spec validators and normalisers (issue 15): arbitrary JSON in, shaped like
the Engine API bodies (engineapi/bodykeys.py) with keys in any case, wrong types at any depth,
unknown keys and odd values. Out comes either a stored spec the server can serve, accept back
unchanged and hand to its loops, or a SpecError/ApiError (a 400, 403 or 409) whose message names
a field. Any other exception would be a 500.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

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
    canonical_keys,
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

EXAMPLES = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Values a field plausibly holds, so that generated specs get past the first check now and then.
PLAUSIBLE = ["", "vip", "dnsrr", "tcp", "udp", "sctp", "TCP", "ingress", "host", "stop-first", "start-first",
             "pause", "continue", "rollback", "any", "none", "on-failure", "manager", "worker", "active", "drain",
             "overlay", "default", "bind", "volume", "tmpfs", "busybox", "busybox:latest", "web", "node.role==manager",
             "node.labels.zone", "engine.labels.x", "node.labels.a != b", "10.1.0.0/24", "10.1.0.1", "10.1.0.0/33",
             "fe80::/64", "aGk=", "not base64!", "swarm", "local", "1,2", "4096", "a" * 70]
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**65), max_value=2**65)
           | st.sampled_from([0, 1, 80, 8080, 65535, 65536, -1, 10**9, 0.5, 2.0, 1e300])
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12) | st.sampled_from(PLAUSIBLE))
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


STRING_LISTS = {"Command", "Args", "Env", "Groups", "Hosts", "CapabilityAdd", "CapabilityDrop", "Constraints",
                "Aliases", "Nameservers", "Search", "Test", "DefaultAddrPool", "RemoteAddrs"}
NUMBERS = {"Replicas", "MaxConcurrent", "TotalCompletions", "Parallelism", "Delay", "Monitor", "Window",
           "MaxAttempts", "StopGracePeriod", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries",
           "NanoCPUs", "MemoryBytes", "Pids", "TargetPort", "PublishedPort", "ForceUpdate", "MaxReplicas",
           "MaxFailureRatio", "TaskHistoryRetentionLimit", "SnapshotInterval", "KeepOldSnapshots",
           "LogEntriesForSlowFollowers", "ElectionTick", "HeartbeatTick", "HeartbeatPeriod", "NodeCertExpiry",
           "OomScoreAdj", "SizeBytes", "Soft", "Hard", "ForceRotate"}
FLAGS = {"TTY", "OpenStdin", "ReadOnly", "Init", "Internal", "Attachable", "Ingress", "ConfigOnly", "EnableIPv4",
         "EnableIPv6", "CheckDuplicate", "AutoLockManagers", "Rebalance", "NoCopy", "NoNewPrivileges"}
REQUIRED = {"TaskTemplate", "ContainerSpec", "Image", "Name", "Target", "TargetPort"}   # often sent
NUMBER = st.sampled_from([0, 1, 2, 3, 80, 8080, 65535, 5_000_000_000]) | st.integers(-10, 2**64) | st.floats(0, 1)


def typed(name: str) -> st.SearchStrategy[Any]:
    """A value of the type the field `name` has, mostly plausible."""
    if name in STRING_LISTS:
        return st.lists(st.sampled_from(PLAUSIBLE) | st.text(max_size=8), max_size=3)
    if name in NUMBERS:
        return NUMBER
    if name in FLAGS:
        return st.booleans()
    if name in ("Name", "Image", "Target"):
        return st.sampled_from(["web", "db-1", "a.b", "busybox:latest"]) | st.text(max_size=10)
    return st.sampled_from(PLAUSIBLE) | st.text(max_size=10)


@st.composite
def shaped(draw: st.DrawFn, shape: Shape, name: str = "") -> Any:
    """JSON along `shape`: a few of its keys (some in lower case), sometimes an unknown one, and
    now and then a value of any type in place of the one expected."""
    if draw(st.integers(1, 16)) == 16:
        return draw(ANY_JSON)
    if isinstance(shape, Obj):
        names = [n for n in sorted(shape.fields) if n in REQUIRED and draw(st.integers(1, 5)) < 5]
        if shape.fields:
            names += draw(st.lists(st.sampled_from(sorted(shape.fields)), unique=True, max_size=3))
        out = {draw(st.sampled_from([n, n, n.lower()])): draw(shaped(shape.fields[n], n)) for n in names}
        if draw(st.integers(1, 16)) == 16:
            out[draw(st.text(max_size=8))] = draw(ANY_JSON)
        return out
    if isinstance(shape, ListOf):
        return draw(st.lists(shaped(shape.item, name), max_size=3))
    if isinstance(shape, MapOf):
        return draw(st.dictionaries(st.text(max_size=8), typed("") if shape.value is None else shaped(shape.value),
                                    max_size=3))
    return draw(typed(name))


STRINGS = {"Name", "Image", "Hostname", "Dir", "User", "StopSignal", "Isolation", "Runtime", "SecretID", "SecretName",
           "ConfigID", "ConfigName", "UID", "GID", "Source", "Target", "Condition", "FailureAction", "Order",
           "Protocol", "PublishMode", "Role", "Availability", "Architecture", "OS", "Data", "Scope", "Subnet",
           "Gateway", "IPRange", "SpreadDescriptor"}


def ill_typed(value: Any, shape: Shape, name: str = "", path: str = "") -> list[str]:
    """Where a stored spec holds a value of another type than Docker's for the field (null: unset)."""
    if value is None:
        return []
    if isinstance(shape, Obj):
        if not isinstance(value, dict):
            return [path]
        return [p for k, v in value.items() if k in shape.fields
                for p in ill_typed(v, shape.fields[k], k, f"{path}.{k}")]
    if isinstance(shape, ListOf):
        if not isinstance(value, list):
            return [path]
        return [p for i, v in enumerate(value) for p in ill_typed(v, shape.item, name, f"{path}[{i}]")]
    if isinstance(shape, MapOf):
        if not isinstance(value, dict):
            return [path]
        return [p for k, v in value.items() for p in
                (([] if isinstance(v, str) else [f"{path}.{k}"]) if shape.value is None
                 else ill_typed(v, shape.value, "", f"{path}.{k}"))]
    ok = {name in STRING_LISTS: isinstance(value, list) and all(isinstance(v, str) for v in value),
          name in NUMBERS: isinstance(value, int | float) and not isinstance(value, bool),
          name in FLAGS: isinstance(value, bool),
          name in STRINGS: isinstance(value, str)}.get(True, True)
    return [] if ok else [path]


def key_names(shape: Shape) -> set[str]:
    if isinstance(shape, Obj):
        return set(shape.fields).union(*(key_names(s) for s in shape.fields.values()))
    if isinstance(shape, ListOf):
        return key_names(shape.item)
    if isinstance(shape, MapOf):
        return key_names(shape.value)
    return set()


def assert_names_a_field(message: str, shape: Shape, extra: tuple[str, ...] = ()) -> None:
    words = key_names(shape) | set(extra)
    assert message and any(word in message for word in words), f"no field named in {message!r}"


def refused(exc: Exception) -> str:
    """The message of an error the API answers with a 4xx; any other exception fails the test."""
    if isinstance(exc, SpecError | IpamError) or (isinstance(exc, ApiError) and 400 <= exc.status < 500):
        event("refused")
        return str(exc)
    raise exc


class NoObjects:
    """A store transaction that holds no secrets or configs."""

    def get(self, table: str, obj_id: str) -> None:
        return None

    def find(self, table: str, **kwargs: Any) -> list[Any]:
        return []


@EXAMPLES
@given(shaped(SERVICE_SPEC))
def test_service_spec(body: Any) -> None:
    spec = canonical_keys(body, SERVICE_SPEC)
    if not isinstance(spec, dict):
        return                                  # the handler answers 400 before validating
    sent = copy.deepcopy(spec)
    try:
        validate_service_spec(spec)
        assert spec == sent, "validation must not change the spec"
        stored = normalize_service_spec(spec, lambda target: target)
        resolve_references(NoObjects(), copy.deepcopy(stored))   # type: ignore[arg-type]
    except Exception as exc:
        assert_names_a_field(refused(exc), SERVICE_SPEC, ("ServiceSpec", "secret", "config"))
        return
    event("stored")
    assert ill_typed(stored, SERVICE_SPEC) == []
    json.dumps(stored)
    validate_service_spec(stored)               # the server accepts back what it shows
    assert normalize_service_spec(stored, lambda target: target) == stored
    json.dumps(insert_service_defaults(stored))
    service = Service(id="s", spec=stored)
    assert service.mode in ("replicated", "global", "replicated-job", "global-job")
    assert isinstance(service.replicas, int) and service.replicas >= 0
    port_conflict(stored, [], "")
    needs_ingress(service)
    restart_policy(stored["TaskTemplate"])
    update_config(stored)
    update_config(stored, rollback=True)
    placement_constraints(stored["TaskTemplate"])


@EXAMPLES
@given(shaped(NETWORK_CREATE))
def test_network_create(body: Any) -> None:
    spec = canonical_keys(body, NETWORK_CREATE)
    if not isinstance(spec, dict):
        return
    try:
        validate_network_create(spec)
        _check_create(spec)
        stored = _stored_spec(spec)
        plan_network(Network(id="n", spec=stored), [], ["10.0.0.0/8"], 24)
    except Exception as exc:
        assert_names_a_field(refused(exc), NETWORK_CREATE, ("NetworkCreate", "subnet", "gateway", "ingress", "label",
                                                            "vxlan", "IP", "address", "plugin", "pool"))
        return
    assert ill_typed(stored, NETWORK_CREATE) == []
    json.dumps(stored)


@EXAMPLES
@given(shaped(SECRET_SPEC), shaped(SECRET_SPEC))
def test_secret_spec_and_update(body: Any, update: Any) -> None:
    spec, new = canonical_keys(body, SECRET_SPEC), canonical_keys(update, SECRET_SPEC)
    if not isinstance(spec, dict) or not isinstance(new, dict):
        return
    try:
        validate_secret_spec(spec)
    except Exception as exc:
        assert_names_a_field(refused(exc), SECRET_SPEC, ("SecretSpec",))
        return
    stored = _stored(spec)
    assert ill_typed(stored, SECRET_SPEC) == []
    json.dumps(stored)
    try:
        check_secret_update(stored, new, "secret")
    except Exception as exc:
        assert_names_a_field(refused(exc), SECRET_SPEC, ("SecretSpec",))


@EXAMPLES
@given(shaped(CONFIG_SPEC))
def test_config_spec(body: Any) -> None:
    spec = canonical_keys(body, CONFIG_SPEC)
    if not isinstance(spec, dict):
        return
    try:
        validate_config_spec(spec)
    except Exception as exc:
        assert_names_a_field(refused(exc), CONFIG_SPEC, ("ConfigSpec",))
        return
    assert ill_typed(_stored(spec), CONFIG_SPEC) == []


@EXAMPLES
@given(shaped(NODE_SPEC))
def test_node_spec(body: Any) -> None:
    spec = canonical_keys(body, NODE_SPEC)
    try:
        validate_node_spec(spec)
    except Exception as exc:
        assert_names_a_field(refused(exc), NODE_SPEC, ("NodeSpec",))
        return
    spec = spec or {}
    stored = {"Labels": spec.get("Labels") or {}, "Role": spec.get("Role") or "worker",
              "Availability": spec.get("Availability") or "active"}
    validate_node_spec(stored)
    assert ill_typed(stored, NODE_SPEC) == []


@EXAMPLES
@given(shaped(SWARM_SPEC))
def test_swarm_spec(body: Any) -> None:
    spec = canonical_keys(body, SWARM_SPEC)
    try:
        validate_swarm_spec(spec)
    except Exception as exc:
        assert_names_a_field(refused(exc), SWARM_SPEC, ("Spec",))
        return
    stored = normalize_swarm_spec(spec or None)
    assert ill_typed(stored, SWARM_SPEC) == []
    json.dumps(stored)
    validate_swarm_spec(stored)                 # `swarm update` sends back what `GET /swarm` showed
    assert normalize_swarm_spec(stored, base=stored) == stored
