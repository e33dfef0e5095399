"""Validation and defaults of NodeSpec, the Swarm spec, SecretSpec, ConfigSpec and network create."""

from __future__ import annotations

import base64
import binascii
import copy
from typing import Any

from manager.specs.checks import (
    choice,
    driver,
    duration,
    field_map,
    integer,
    object_list,
    string,
    string_map,
    typed_fields,
)
from manager.specs.errors import SpecError
from manager.specs.service import validate_name

NODE_KEYS = frozenset({"Name", "Labels", "Role", "Availability"})
MAX_SECRET_BYTES = 500 * 1024


def validate_node_spec(spec: Any) -> None:
    spec = field_map(spec, "NodeSpec", NODE_KEYS)
    if spec.get("Name") is not None:
        string(spec["Name"], "Name")
    string_map(spec.get("Labels"), "Labels")
    if spec.get("Role") is not None:
        choice(spec["Role"], "Role", ("worker", "manager"))
    if spec.get("Availability") is not None:
        choice(spec["Availability"], "Availability", ("active", "pause", "drain"))


def default_swarm_spec() -> dict[str, Any]:
    return {
        "Name": "default", "Labels": {},
        "Orchestration": {"TaskHistoryRetentionLimit": 5},
        "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500,
                 "ElectionTick": 10, "HeartbeatTick": 1},
        "Dispatcher": {"HeartbeatPeriod": 5_000_000_000},
        "CAConfig": {"NodeCertExpiry": 7_776_000_000_000_000},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": False},
    }


SWARM_KEYS = frozenset({"Name", "Labels", "Orchestration", "Raft", "Dispatcher", "CAConfig", "TaskDefaults",
                        "EncryptionConfig"})


def validate_swarm_spec(spec: Any) -> None:
    spec = field_map(spec, "Spec", SWARM_KEYS)
    if spec.get("Name") is not None:
        string(spec["Name"], "Spec.Name")
    string_map(spec.get("Labels"), "Spec.Labels")
    orch = field_map(spec.get("Orchestration"), "Spec.Orchestration",
                     frozenset({"TaskHistoryRetentionLimit", "Rebalance"}))   # Rebalance: shoal's own
    if orch.get("TaskHistoryRetentionLimit") is not None:
        integer(orch["TaskHistoryRetentionLimit"], "Spec.Orchestration.TaskHistoryRetentionLimit", minimum=None)
    if orch.get("Rebalance") is not None and not isinstance(orch["Rebalance"], bool):
        raise SpecError(f"Spec.Orchestration.Rebalance must be a boolean, not {orch['Rebalance']!r}")
    raft = field_map(spec.get("Raft"), "Spec.Raft", frozenset({"SnapshotInterval", "KeepOldSnapshots",
                                                               "LogEntriesForSlowFollowers", "ElectionTick",
                                                               "HeartbeatTick"}))
    for key, value in raft.items():
        if value is not None:
            integer(value, f"Spec.Raft.{key}")
    disp = field_map(spec.get("Dispatcher"), "Spec.Dispatcher", frozenset({"HeartbeatPeriod"}))
    if disp.get("HeartbeatPeriod") is not None:
        duration(disp["HeartbeatPeriod"], "Spec.Dispatcher.HeartbeatPeriod")
    ca = field_map(spec.get("CAConfig"), "Spec.CAConfig")
    if ca.get("NodeCertExpiry") is not None:
        duration(ca["NodeCertExpiry"], "Spec.CAConfig.NodeCertExpiry")
    typed_fields(ca, "Spec.CAConfig", {"ForceRotate": int, "SigningCACert": str, "SigningCAKey": str})
    for i, external in enumerate(object_list(ca.get("ExternalCAs"), "Spec.CAConfig.ExternalCAs")):
        typed_fields(external, f"Spec.CAConfig.ExternalCAs[{i}]", {"Protocol": str, "URL": str, "CACert": str})
        string_map(external.get("Options"), f"Spec.CAConfig.ExternalCAs[{i}].Options")
    driver(field_map(spec.get("TaskDefaults"), "Spec.TaskDefaults", frozenset({"LogDriver"})).get("LogDriver"),
           "Spec.TaskDefaults.LogDriver")
    encryption = field_map(spec.get("EncryptionConfig"), "Spec.EncryptionConfig", frozenset({"AutoLockManagers"}))
    typed_fields(encryption, "Spec.EncryptionConfig", {"AutoLockManagers": bool})


def normalize_swarm_spec(spec: dict[str, Any] | None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """`spec` with zero values (as the CLI sends them on init) filled from `base` (or defaults)."""
    out = copy.deepcopy(base or default_swarm_spec())
    for key, value in (spec or {}).items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "Labels":
            for sub, subval in value.items():
                if isinstance(subval, bool) or subval not in (None, 0, "") or sub not in out[key]:  # False is a value
                    out[key][sub] = subval
        else:
            out[key] = value
    out["Labels"] = out.get("Labels") or {}
    out["Name"] = out.get("Name") or "default"
    return out


def _validate_data(value: Any, path: str, required: bool) -> None:
    if value is None:
        if required:
            raise SpecError(f"invalid {path}: data must be provided")
        return
    try:
        raw = base64.b64decode(string(value, path), validate=True)
    except (binascii.Error, ValueError):
        raise SpecError(f"invalid {path}: data must be base64-encoded") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise SpecError(f"invalid {path}: data is larger than the maximum of {MAX_SECRET_BYTES} bytes")


def _validate_named_spec(spec: Any, what: str, known: frozenset[str]) -> dict[str, Any]:
    spec = field_map(spec, what, known)
    name = spec.get("Name")
    if not name:
        raise SpecError(f"invalid {what}.Name: a name is required")
    validate_name(name, f"{what}.Name")
    string_map(spec.get("Labels"), f"{what}.Labels")
    return spec


def validate_secret_spec(spec: Any) -> None:
    spec = _validate_named_spec(spec, "SecretSpec", frozenset({"Name", "Labels", "Data", "Driver", "Templating"}))
    driver(spec.get("Driver"), "SecretSpec.Driver")
    driver(spec.get("Templating"), "SecretSpec.Templating")
    _validate_data(spec.get("Data"), "SecretSpec.Data", required=not spec.get("Driver"))


def validate_config_spec(spec: Any) -> None:
    spec = _validate_named_spec(spec, "ConfigSpec", frozenset({"Name", "Labels", "Data", "Templating"}))
    driver(spec.get("Templating"), "ConfigSpec.Templating")
    _validate_data(spec.get("Data"), "ConfigSpec.Data", required=True)


def check_secret_update(old: dict[str, Any], new: dict[str, Any], what: str = "secret") -> None:
    """Only Labels may change on secret/config update."""
    strip = lambda s: {k: v for k, v in s.items() if k != "Labels" and v is not None}  # noqa: E731
    if strip(old) != strip(new):
        raise SpecError(f"rpc error: code = InvalidArgument desc = only updates to Labels are allowed "
                        f"for {what}s")


NETWORK_KEYS = frozenset({"Name", "Driver", "Scope", "IPAM", "Internal", "Attachable", "Ingress",
                          "ConfigOnly", "ConfigFrom", "Options", "Labels", "EnableIPv6", "EnableIPv4",
                          "CheckDuplicate"})


def validate_network_create(spec: Any) -> None:
    spec = _validate_named_spec(spec, "NetworkCreate", NETWORK_KEYS)
    driver = spec.get("Driver") or "overlay"
    if driver != "overlay":
        raise SpecError(f"invalid NetworkCreate.Driver: {driver!r} is not supported for swarm networks "
                        "(use overlay)")
    ipam = field_map(spec.get("IPAM"), "NetworkCreate.IPAM", frozenset({"Driver", "Options", "Config"}))
    typed_fields(ipam, "NetworkCreate.IPAM", {"Driver": str})
    string_map(ipam.get("Options"), "NetworkCreate.IPAM.Options")
    for i, cfg in enumerate(object_list(ipam.get("Config"), "NetworkCreate.IPAM.Config")):
        where = f"NetworkCreate.IPAM.Config[{i}]"
        field_map(cfg, where, frozenset({"Subnet", "IPRange", "Gateway", "AuxiliaryAddresses"}))
        typed_fields(cfg, where, {"Subnet": str, "IPRange": str, "Gateway": str})
        string_map(cfg.get("AuxiliaryAddresses"), f"{where}.AuxiliaryAddresses")
    typed_fields(field_map(spec.get("ConfigFrom"), "NetworkCreate.ConfigFrom", frozenset({"Network"})),
                 "NetworkCreate.ConfigFrom", {"Network": str})
    string_map(spec.get("Options"), "NetworkCreate.Options")
    typed_fields(spec, "NetworkCreate", {"Scope": str, "Internal": bool, "Attachable": bool, "Ingress": bool,
                                         "ConfigOnly": bool, "EnableIPv4": bool, "EnableIPv6": bool,
                                         "CheckDuplicate": bool})
