"""schemathesis against a live daemon (issue 15): every operation of engineapi/openapi.yaml gets a
bounded number of generated requests, valid and invalid, on a swarm of one in a network namespace
with only loopback (tests/fuzz/daemon_netns.py). No answer may be a server error, and answers
must match the description (status, content type, body schema). Half the requests that name an
object name a seed object (one service, secret, config, network, and the node) with its current
version, so that updates are applied, not only looked up. Afterwards the daemon still pings and
creates a service.

Left out: `POST /swarm/leave`, which would end the swarm the rest runs in (the last test leaves,
and makes a new swarm). Streams that never end by themselves are bounded instead: `/events` gets
`until`, logs lose `follow`, stats `stream`.

Two 5xx answers are dockerd's own, and allowed: 500 "update out of sequence" to an update based
on a stale `version` (a gRPC Unknown in swarmkit), and 503 "This node is already part of a
swarm" to init or join. docker-py and the CLI see exactly those statuses (docker-py's tests
assert the 503).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from manager.api.objects_common import UPDATE_OUT_OF_SEQUENCE
from node.swarm_api import ALREADY_IN_SWARM
from tests.fuzz.daemon_netns import BASE_URL, interfaces, isolated_daemon, unix_session
from tests.fuzz.test_openapi_routes import OPENAPI
from tests.support.daemon import DaemonProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace for the daemon)")

EXAMPLES = int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "20"))   # per operation
REQUEST_TIMEOUT = 30.0
SWARM_PORT = 2377       # in the daemon's own namespace: nothing else listens there

schema = schemathesis.openapi.from_path(str(OPENAPI)).exclude(path="/swarm/leave")
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")   # image load: any bytes


class Tally:
    """What the fuzzing did, for the closing summary (tests/fuzz/conftest.py prints it)."""
    requests = 0
    server_errors = 0       # >= 500, dockerd's own (below) included
    stale_version = 0       # 500 "update out of sequence"
    already_in_swarm = 0    # 503 to init or join


def dockerd_5xx(status: int, message: str | None, path: str) -> bool:
    """The 5xx answers dockerd gives too (see the module's docstring); counts them."""
    if status == 500 and message == UPDATE_OUT_OF_SEQUENCE and path.endswith("/update"):
        Tally.stale_version += 1
        return True
    if status == 503 and message == ALREADY_IN_SWARM and path in ("/swarm/init", "/swarm/join"):
        Tally.already_in_swarm += 1
        return True
    return False


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    with isolated_daemon(root) as d:
        assert interfaces(d.proc.pid) == ["lo"], "the fuzzed daemon must see no interface but loopback"
        with unix_session(d) as s:
            r = s.post(f"{BASE_URL}/swarm/init", json={"ListenAddr": f"127.0.0.1:{SWARM_PORT}",
                                                       "AdvertiseAddr": f"127.0.0.1:{SWARM_PORT}"}, timeout=60)
            assert r.status_code == 200, r.text
        yield d


@pytest.fixture(scope="module")
def session(daemon: DaemonProcess) -> Iterator[requests.Session]:
    with unix_session(daemon) as s:
        yield s


NO_IMAGE = "127.0.0.1:1/none:1"     # a registry on loopback where nothing listens
SEED_BODIES: dict[str, dict[str, Any]] = {
    "secrets": {"Name": "seed-secret", "Data": "c2VjcmV0"},
    "configs": {"Name": "seed-config", "Data": "Y29uZmln"},
    "networks": {"Name": "seed-net", "Driver": "overlay", "Attachable": True},
    "services": {"Name": "seed-svc", "TaskTemplate": {"ContainerSpec": {"Image": NO_IMAGE}},
                 "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 30080}]}},
}


@pytest.fixture(scope="module")
def seeds(session: requests.Session) -> dict[str, str]:
    """One object of each kind, for the requests that name an existing one (see `aim_at_seeds`)."""
    ids = {}
    for kind, body in SEED_BODIES.items():
        r = session.post(f"{BASE_URL}/{kind}/create", json=body, timeout=30)
        assert r.status_code == 201, r.text
        ids[kind] = r.json().get("ID") or r.json()["Id"]
    ids["nodes"] = session.get(f"{BASE_URL}/info", timeout=10).json()["Swarm"]["NodeID"]
    return ids


def aim_at_seeds(case: schemathesis.Case, session: requests.Session, seeds: dict[str, str]) -> None:
    """Half the requests that name an object (those whose generated `ref` has an even length)
    name a seed object instead, with its current `version`: so updates get past the lookup and
    the version check, to the code that applies them. Deletes keep their random names."""
    kind = case.operation.path.split("/")[1]
    ref = (case.path_parameters or {}).get("ref")
    if not isinstance(ref, str) or kind not in seeds or case.method.upper() == "DELETE" or len(ref) % 2:
        return
    case.path_parameters = {**(case.path_parameters or {}), "ref": seeds[kind]}
    if isinstance(case.query, dict) and "version" in case.query:
        shown = session.get(f"{BASE_URL}/{kind}/{seeds[kind]}", timeout=10)
        if shown.status_code == 200:
            case.query["version"] = str(shown.json()["Version"]["Index"])


def bound_streams(case: schemathesis.Case) -> None:
    """Requests that would stream until the client hangs up are made to end."""
    path = case.operation.path
    if not isinstance(case.query, dict):
        case.query = {}
    if path == "/events":
        case.query["since"], case.query["until"] = "0", f"{time.time():.3f}"
    elif path.endswith("/logs"):
        case.query["follow"] = "false"
    elif path.endswith("/stats"):
        case.query["stream"] = "false"


def no_server_error(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """not_a_server_error, except for the 5xx answers dockerd gives too."""
    Tally.requests += 1
    if response.status_code >= 500:
        Tally.server_errors += 1
        try:
            message = response.json().get("message")
        except (ValueError, AttributeError):
            message = None
        if dockerd_5xx(response.status_code, message, case.operation.path):
            return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Newline-delimited JSON streams (zero or more objects): their body is not one JSON document.
NDJSON = {"/events", "/images/create", "/images/load"}


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api(case: schemathesis.Case, session: requests.Session, seeds: dict[str, str]) -> None:
    bound_streams(case)
    aim_at_seeds(case, session, seeds)
    checks = CHECKS[:-1] if case.operation.path in NDJSON else CHECKS
    case.call_and_validate(base_url=BASE_URL, session=session, checks=checks, timeout=REQUEST_TIMEOUT)


def test_daemon_is_healthy_afterwards(session: requests.Session) -> None:
    """Runs after test_api (file order): the daemon pings, and a service can still be created."""
    assert session.get(f"{BASE_URL}/_ping", timeout=10).text == "OK"
    r = session.post(f"{BASE_URL}/services/create", timeout=30, json={
        "Name": "after-the-fuzz", "TaskTemplate": {"ContainerSpec": {"Image": NO_IMAGE}}})
    assert r.status_code == 201, r.text
    r = session.get(f"{BASE_URL}/services/after-the-fuzz", timeout=10)
    assert r.status_code == 200 and r.json()["Spec"]["Name"] == "after-the-fuzz"


def test_the_swarm_it_fuzzed_can_be_left_and_made_again(session: requests.Session) -> None:
    """Last (file order): the route left out of the fuzzing, on the swarm the fuzzing changed."""
    r = session.post(f"{BASE_URL}/swarm/leave", params={"force": "true"}, timeout=60)
    assert r.status_code == 200, r.text
    assert session.get(f"{BASE_URL}/info", timeout=10).json()["Swarm"]["LocalNodeState"] == "inactive"
    r = session.post(f"{BASE_URL}/swarm/init", json={"ListenAddr": f"127.0.0.1:{SWARM_PORT}",
                                                     "AdvertiseAddr": f"127.0.0.1:{SWARM_PORT}"}, timeout=60)
    assert r.status_code == 200, r.text
    assert session.get(f"{BASE_URL}/services", timeout=10).json() == []
