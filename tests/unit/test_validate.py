"""Spec validation (400 messages naming the field) and the defaults the server adds."""

import copy
from typing import Any

import pytest

from manager.specs import (
    SpecError,
    check_secret_update,
    insert_service_defaults,
    normalize_service_spec,
    normalize_swarm_spec,
    parse_constraint,
    restart_policy,
    update_config,
    validate_config_spec,
    validate_network_create,
    validate_node_spec,
    validate_secret_spec,
    validate_service_spec,
    validate_swarm_spec,
)
from model import Node

CLI_BODY: dict[str, Any] = {"Name": "web", "Labels": {}, "TaskTemplate": {
    "ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "9"], "Init": False, "DNSConfig": {},
                      "Secrets": [{"File": {"Name": "s", "UID": "0", "GID": "0", "Mode": 292},
                                   "SecretID": "x", "SecretName": "s"}]},
    "Resources": {"Limits": {}, "Reservations": {}}, "Placement": {}, "Networks": [{"Target": "net"}],
    "ForceUpdate": 0}, "Mode": {"Replicated": {"Replicas": 2}}, "EndpointSpec": {"Mode": "vip"}}


def spec_with(path: str, value) -> dict:
    spec = copy.deepcopy(CLI_BODY)
    *parents, last = path.split(".")
    node = spec
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return spec


def test_cli_body_is_valid_and_stored_with_server_defaults() -> None:
    validate_service_spec(CLI_BODY)
    stored = normalize_service_spec(CLI_BODY, resolve_network=lambda ref: "id-of-" + ref)
    assert stored["TaskTemplate"]["Runtime"] == "container"
    assert stored["TaskTemplate"]["ContainerSpec"]["Isolation"] == "default"
    assert stored["TaskTemplate"]["Networks"] == [{"Target": "id-of-net"}]
    assert stored["TaskTemplate"]["Placement"] == {} and "RollbackConfig" not in stored
    assert CLI_BODY["TaskTemplate"]["Networks"] == [{"Target": "net"}]  # input untouched


def test_missing_replicas_and_nulls() -> None:
    spec = {"Name": "a", "TaskTemplate": {"ContainerSpec": {"Image": "x", "Args": None}},
            "Mode": {"Replicated": {}}, "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]}}
    validate_service_spec(spec)
    stored = normalize_service_spec(spec)
    assert stored["Mode"] == {"Replicated": {"Replicas": 1}} and stored["Labels"] == {}
    assert "Args" not in stored["TaskTemplate"]["ContainerSpec"]
    assert stored["EndpointSpec"] == {"Mode": "vip", "Ports": [
        {"TargetPort": 80, "PublishedPort": 8080, "Protocol": "tcp", "PublishMode": "ingress"}]}
    assert normalize_service_spec({"TaskTemplate": {"ContainerSpec": {"Image": "x"}},
                                   "Mode": {"Global": {}}})["Mode"] == {"Global": {}}


def test_insert_defaults() -> None:
    shown = insert_service_defaults(normalize_service_spec(CLI_BODY))
    tmpl = shown["TaskTemplate"]
    assert tmpl["ContainerSpec"]["StopGracePeriod"] == 10_000_000_000
    assert tmpl["RestartPolicy"] == {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0}
    assert shown["UpdateConfig"] == shown["RollbackConfig"] == {
        "Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000, "MaxFailureRatio": 0,
        "Order": "stop-first"}


@pytest.mark.parametrize(("path", "value", "message"), [
    ("Mode", {"Sometimes": {}}, "unknown mode 'Sometimes'"),
    ("Mode", {"Replicated": {"Replicas": -1}, }, "Mode.Replicated.Replicas: must be at least 0"),
    ("Mode", {"Replicated": {"Replicas": 1}, "Global": {}}, "only one mode"),
    ("Mode", {"ReplicatedJob": {"MaxConcurrent": -1}}, "Mode.ReplicatedJob.MaxConcurrent: must be at least 0"),
    ("Mode", {"GlobalJob": {"Sometimes": 1}}, "unknown field Mode.GlobalJob.Sometimes"),
    ("TaskTemplate.Placement", {"Constraints": ["node.role=manager"]}, "one operator from ==, !="),
    ("TaskTemplate.Placement", {"Constraints": ["node.colour==red"]}, "unknown key 'node.colour'"),
    ("TaskTemplate.RestartPolicy", {"Delay": "5s"}, "RestartPolicy.Delay: expected a duration"),
    ("TaskTemplate.RestartPolicy", {"Window": -5}, "RestartPolicy.Window: duration must not be negative"),
    ("TaskTemplate.RestartPolicy", {"Condition": "always"}, "RestartPolicy.Condition"),
    ("UpdateConfig", {"Order": "random"}, "UpdateConfig.Order"),
    ("UpdateConfig", {"MaxFailureRatio": 2}, "UpdateConfig.MaxFailureRatio"),
    ("RollbackConfig", {"FailureAction": "rollback"}, "RollbackConfig.FailureAction"),
    ("UpdateConfig", {"Paralelism": 2}, "unknown field UpdateConfig.Paralelism"),
    ("Bogus", 1, "unknown field ServiceSpec.Bogus"),
    ("TaskTemplate.Frobnicate", 1, "unknown field TaskTemplate.Frobnicate"),
    ("TaskTemplate.ContainerSpec", {"Image": ""}, "ContainerSpec.Image"),
    ("TaskTemplate.ContainerSpec.StopGracePeriod", 1.5, "StopGracePeriod"),
    ("EndpointSpec", {"Mode": "round-robin"}, "EndpointSpec.Mode"),
    ("EndpointSpec", {"Ports": [{"TargetPort": 80, "Protocol": "icmp"}]}, "Protocol"),
    ("EndpointSpec", {"Ports": [{"TargetPort": 70000}]}, "TargetPort: must be at most 65535"),
    ("Name", "bad name!", "DNS name"),
    ("TaskTemplate.Placement", {"Preferences": [{"Spread": {"SpreadDescriptor": 5}}]}, "SpreadDescriptor"),
])
def test_bad_specs_name_the_field(path: str, value, message: str) -> None:
    with pytest.raises(SpecError, match="invalid") as err:
        validate_service_spec(spec_with(path, value))
    assert message in err.value.message
    assert err.value.http_status == 400


RPC = "rpc error: code = InvalidArgument desc = "


@pytest.mark.parametrize(("endpoint", "message"), [
    ({"Mode": "dnsrr", "Ports": [{"TargetPort": 80, "PublishedPort": 80}]},
     "EndpointSpec: port published with ingress mode can't be used with dnsrr mode"),
    ({"Mode": "DNSRR", "Ports": [{"TargetPort": 80}]},           # published or not, any case
     "EndpointSpec: port published with ingress mode can't be used with dnsrr mode"),
    ({"Ports": [{"TargetPort": 80, "PublishedPort": 8080}, {"TargetPort": 81, "PublishedPort": 8080}]},
     "EndpointSpec: duplicate published ports provided"),
    ({"Ports": [{"TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"},   # host mode too
                {"TargetPort": 81, "PublishedPort": 8080, "PublishMode": "host", "Protocol": "TCP"}]},
     "EndpointSpec: duplicate published ports provided"),
])
def test_endpoint_spec_errors_are_dockers(endpoint: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_service_spec(spec_with("EndpointSpec", endpoint))
    assert err.value.message == RPC + message and err.value.http_status == 400


def test_endpoint_specs_docker_accepts() -> None:
    for endpoint in ({"Mode": "dnsrr", "Ports": [{"TargetPort": 80, "PublishedPort": 80, "PublishMode": "host"}]},
                     {"Ports": [{"TargetPort": 80}, {"TargetPort": 81}]},            # two auto ports
                     {"Ports": [{"TargetPort": 53, "PublishedPort": 53},
                                {"TargetPort": 53, "PublishedPort": 53, "Protocol": "udp"}]}):
        validate_service_spec(spec_with("EndpointSpec", endpoint))
    stored = normalize_service_spec(spec_with("EndpointSpec", {"Mode": "VIP", "Ports": [
        {"TargetPort": 80, "Protocol": "UDP", "PublishMode": "Host"}]}))
    assert stored["EndpointSpec"] == {"Mode": "vip", "Ports": [{"TargetPort": 80, "Protocol": "udp",
                                                                 "PublishMode": "host"}]}
    without = copy.deepcopy(CLI_BODY)
    del without["EndpointSpec"]
    assert "EndpointSpec" not in normalize_service_spec(without)     # none stays none, as in dockerd
    assert normalize_service_spec(spec_with("EndpointSpec", {}))["EndpointSpec"] == {"Mode": "vip"}


def test_constraints_parse_and_match() -> None:
    node = Node(id="n1", spec={"Role": "manager", "Labels": {"zone": "eu"}},
                description={"Hostname": "h1", "Platform": {"OS": "linux", "Architecture": "x86_64"},
                             "Engine": {"Labels": {"ssd": "true"}}})
    assert parse_constraint("node.role == manager").matches(node)
    assert parse_constraint("node.labels.zone==EU").matches(node)
    assert parse_constraint("node.labels.rack!=r1").matches(node)  # missing label: != holds
    assert not parse_constraint("node.labels.rack==r1").matches(node)
    assert parse_constraint("engine.labels.ssd==true").matches(node)
    assert parse_constraint("node.platform.arch==x86_64").matches(node)
    assert not parse_constraint("node.hostname!=h1").matches(node)
    with pytest.raises(SpecError, match="missing value"):
        parse_constraint("node.id==")


def test_effective_policies() -> None:
    assert restart_policy({}).delay == 5.0 and restart_policy({}).condition == "any"
    pol = restart_policy({"RestartPolicy": {"Condition": "on-failure", "Delay": 0, "MaxAttempts": 3,
                                            "Window": 60_000_000_000}})
    assert (pol.condition, pol.delay, pol.max_attempts, pol.window) == ("on-failure", 0, 3, 60.0)
    assert update_config({}).parallelism == 1
    cfg = update_config({"UpdateConfig": {"Parallelism": 0, "Order": "start-first", "Monitor": 1_000_000_000}})
    assert (cfg.parallelism, cfg.order, cfg.monitor, cfg.failure_action) == (0, "start-first", 1.0, "pause")


def test_other_specs() -> None:
    validate_node_spec({"Labels": {"a": "b"}, "Role": "worker", "Availability": "drain"})
    with pytest.raises(SpecError, match="Availability"):
        validate_node_spec({"Availability": "asleep"})
    with pytest.raises(SpecError, match=r"unknown field NodeSpec\.Colour"):
        validate_node_spec({"Colour": "red"})
    validate_secret_spec({"Name": "s", "Data": "aGk="})
    with pytest.raises(SpecError, match="base64"):
        validate_secret_spec({"Name": "s", "Data": "not base64!"})
    with pytest.raises(SpecError, match=r"SecretSpec\.Name"):
        validate_secret_spec({"Data": "aGk="})
    validate_config_spec({"Name": "c", "Data": "aGk=", "Labels": {}})
    check_secret_update({"Name": "s", "Data": "aGk=", "Labels": {}},
                        {"Name": "s", "Data": "aGk=", "Labels": {"x": "1"}})
    with pytest.raises(SpecError, match="only updates to Labels"):
        check_secret_update({"Name": "s", "Data": "aGk="}, {"Name": "s", "Data": "b3RoZXI="})
    validate_network_create({"Name": "n", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.1.0.0/24"}]}})
    with pytest.raises(SpecError, match="Driver"):
        validate_network_create({"Name": "n", "Driver": "bridge"})


def test_swarm_spec_defaults_and_validation() -> None:
    cli_init = {"Labels": None, "Orchestration": {}, "Raft": {"ElectionTick": 0, "HeartbeatTick": 0},
                "Dispatcher": {}, "CAConfig": {}, "TaskDefaults": {}, "EncryptionConfig": {"AutoLockManagers": False}}
    validate_swarm_spec(cli_init)
    spec = normalize_swarm_spec(cli_init)
    assert spec["Raft"]["ElectionTick"] == 10 and spec["Orchestration"]["TaskHistoryRetentionLimit"] == 5
    assert spec["Name"] == "default" and spec["Labels"] == {}
    updated = normalize_swarm_spec({"Orchestration": {"TaskHistoryRetentionLimit": 2}}, base=spec)
    assert updated["Orchestration"]["TaskHistoryRetentionLimit"] == 2
    with pytest.raises(SpecError, match="HeartbeatPeriod"):
        validate_swarm_spec({"Dispatcher": {"HeartbeatPeriod": -1}})


def test_empty_enum_strings_mean_the_default() -> None:
    """`docker stack deploy` sends "" for an UpdateConfig.Order/FailureAction it was not given;
    Docker reads "" as the default, and so do we (accepted, shown as the default)."""
    spec = {"Name": "st_web", "TaskTemplate": {"ContainerSpec": {"Image": "x"},
                                               "RestartPolicy": {"Condition": ""}},
            "Mode": {"Replicated": {"Replicas": 3}},
            "UpdateConfig": {"Parallelism": 1, "FailureAction": "", "Order": ""},
            "RollbackConfig": {"Parallelism": 1, "FailureAction": "", "Order": ""}}
    validate_service_spec(spec)
    shown = insert_service_defaults(normalize_service_spec(spec))
    assert shown["UpdateConfig"]["Order"] == shown["RollbackConfig"]["Order"] == "stop-first"
    assert shown["UpdateConfig"]["FailureAction"] == shown["RollbackConfig"]["FailureAction"] == "pause"
    assert shown["TaskTemplate"]["RestartPolicy"]["Condition"] == "any"
    assert update_config(shown).order == "stop-first" and restart_policy(shown["TaskTemplate"]).condition == "any"
