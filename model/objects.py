"""The cluster objects: Cluster (Swarm), Node, Service, Task, Network, Secret, Config.

Each object is a dataclass with ID, a version index, CreatedAt/UpdatedAt and a `spec` kept
as the Engine API dict, verbatim (so specs round-trip exactly), plus status fields apart
from the spec. `to_api()` gives the Engine API JSON shape; `to_record()`/`from_record()` give
plain data for msgpack (the store's log entries and snapshots).

Objects held by the store are shared and must be treated as read-only: call `copy()` and
hand the copy to a write transaction.
"""

from __future__ import annotations

import copy as _copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from model.node_state import NodeState, Reachability, check_node_move, check_reachability_move
from model.task_state import TaskState, TaskStatus, check_transition
from model.update_state import UpdateState, check_update_move

JSON = dict[str, Any]
_RECORD_FIELDS: dict[type, tuple[str, ...]] = {}  # per class: its dataclass field names, in order
_STATE_OF = {int(state): state for state in TaskState}
_NUMBER_OF = {state: int(state) for state in TaskState}  # a dict read is cheaper than int(member)
_NODE_STATE_OF: dict[str, NodeState] = {state.value: state for state in NodeState}  # cheaper than NodeState(text)
_UPDATE_STATE_OF: dict[str, UpdateState] = {state.value: state for state in UpdateState}
_new_object = object.__new__


@dataclass(kw_only=True)
class StoreObject:
    TABLE: ClassVar[str] = ""
    id: str
    version: int = 0
    created_at: str = ""
    updated_at: str = ""
    spec: JSON = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The name lookups and the unique-name index use ("" = none)."""
        return str(self.spec.get("Name") or "")

    def meta_api(self) -> JSON:
        return {"ID": self.id, "Version": {"Index": self.version},
                "CreatedAt": self.created_at, "UpdatedAt": self.updated_at}

    def to_api(self) -> JSON:
        return {**self.meta_api(), "Spec": self.spec}

    def to_record(self) -> JSON:
        names = _RECORD_FIELDS.get(type(self))
        if names is None:
            names = _RECORD_FIELDS[type(self)] = tuple(f.name for f in dataclasses.fields(self))
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_record(cls, rec: JSON) -> Any:
        return cls(**rec)

    def copy(self) -> Any:
        """A deep copy that may be modified and written back."""
        return _copy.deepcopy(self)


@dataclass(kw_only=True)
class Cluster(StoreObject):
    """The swarm itself (`GET /swarm`). Exactly one, named "default"."""

    TABLE: ClassVar[str] = "clusters"
    join_tokens: JSON = field(default_factory=lambda: {"Worker": "", "Manager": ""})
    tls_info: JSON = field(default_factory=dict)
    root_rotation_in_progress: bool = False
    default_addr_pool: list[str] = field(default_factory=lambda: ["10.0.0.0/8"])
    subnet_size: int = 24
    data_path_port: int = 4789
    unlock_key: str = ""
    root_ca: JSON = field(default_factory=dict)  # CA material kept by the certificate authority
    network_bootstrap_keys: list[JSON] = field(default_factory=list)

    def to_api(self, include_join_tokens: bool = True) -> JSON:
        out = {**self.meta_api(), "Spec": self.spec, "TLSInfo": self.tls_info,
               "RootRotationInProgress": self.root_rotation_in_progress,
               "DefaultAddrPool": self.default_addr_pool, "SubnetSize": self.subnet_size,
               "DataPathPort": self.data_path_port}
        if include_join_tokens:
            out["JoinTokens"] = self.join_tokens
        return out


@dataclass(kw_only=True)
class Node(StoreObject):
    """spec: {Name?, Labels, Role, Availability}; description: what the node reported."""

    TABLE: ClassVar[str] = "nodes"
    description: JSON = field(default_factory=dict)
    status: JSON = field(default_factory=lambda: {"State": "unknown", "Message": "", "Addr": ""})
    manager_status: JSON | None = None
    # The node's own endpoint on each overlay network it needs (ingress, and every network its
    # live tasks use), written by the allocator in swarmkit's NetworkAttachment shape:
    # [{"Network": <Network.to_swarm_api()>, "Addresses": ["10.0.0.2/24"]}]. Not in the Engine API.
    attachments: list[JSON] = field(default_factory=list)
    # swarmkit's Node.Certificate status: {"State": "issued" | "rotate"}; "rotate" asks the node
    # to renew (root CA rotation, manager/swarm/ca_rotation.py). Not in the Engine API.
    certificate: JSON = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec.get("Name") or self.description.get("Hostname") or "")

    @property
    def hostname(self) -> str:
        return str(self.description.get("Hostname") or "")

    @property
    def state(self) -> NodeState:
        text = self.status.get("State", "unknown")
        state = _NODE_STATE_OF.get(text)
        return state if state is not None else NodeState.from_api(text)

    def set_state(self, state: NodeState, message: str = "", addr: str | None = None) -> None:
        """Move Status.State along the table (model/node_state.py), with its message (and a new
        address when given). An illegal move raises and changes nothing."""
        check_node_move(self.state, state)
        status = {**self.status, "State": state.value, "Message": message}
        if addr is not None:
            status["Addr"] = addr
        self.status = status

    @property
    def reachability(self) -> Reachability | None:
        """ManagerStatus.Reachability; None for a worker."""
        if self.manager_status is None:
            return None
        return Reachability.from_api(self.manager_status.get("Reachability", "unknown"))

    def set_reachability(self, reachability: Reachability) -> None:
        """Move a manager's reachability along the table. An illegal move, or a node without
        a manager status, raises and changes nothing."""
        current = self.reachability
        if current is None or self.manager_status is None:
            raise ValueError(f"node {self.id} has no manager status")
        check_reachability_move(current, reachability)
        self.manager_status = {**self.manager_status, "Reachability": reachability.value}

    def set_manager_status(self, raft_id: int, addr: str, reachability: Reachability) -> None:
        """Record the node as a Raft member. A new manager status starts at `reachability`; an
        existing one moves there along the table (an illegal move raises and changes nothing)."""
        if self.manager_status is not None:
            current = self.reachability
            assert current is not None
            check_reachability_move(current, reachability)
        self.manager_status = {"RaftID": raft_id, "Addr": addr, "Reachability": reachability.value}

    @property
    def availability(self) -> str:
        return str(self.spec.get("Availability", "active"))

    @property
    def role(self) -> str:
        return str(self.spec.get("Role", "worker"))

    def to_api(self) -> JSON:
        out = {**self.meta_api(), "Spec": self.spec, "Description": self.description, "Status": self.status}
        if self.manager_status is not None:
            out["ManagerStatus"] = self.manager_status
        return out


@dataclass(kw_only=True)
class Service(StoreObject):
    """`endpoint` is the Engine API's Endpoint, as stored:
    {"Spec": <a copy of Spec.EndpointSpec, {} when there is none>,
     "Ports": [PortConfig, ...],          # every spec port in spec order, Protocol and PublishMode
                                          # lower-case; an ingress port asked as 0 holds the port the
                                          # allocator chose (30000-32767); omitted when none
     "VirtualIPs": [{"NetworkID": "<id>", "Addr": "10.0.1.2/24"}, ...]}  # vip mode: ingress first
                                          # (if an ingress port is published), then the spec's
                                          # networks in order; omitted when none
    The API writes `Spec`; the allocator (manager/allocator) writes Ports and VirtualIPs."""

    TABLE: ClassVar[str] = "services"
    previous_spec: JSON | None = None
    endpoint: JSON = field(default_factory=dict)
    update_status: JSON | None = None
    job_status: JSON | None = None
    pending_delete: bool = False

    @property
    def mode(self) -> str:
        """"replicated" | "global" | "replicated-job" | "global-job"."""
        mode = self.spec.get("Mode") or {}
        if "Global" in mode:
            return "global"
        if "ReplicatedJob" in mode:
            return "replicated-job"
        if "GlobalJob" in mode:
            return "global-job"
        return "replicated"

    @property
    def replicas(self) -> int:
        return int(((self.spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1))

    @property
    def update_state(self) -> UpdateState | None:
        """UpdateStatus.State; None when there is no UpdateStatus."""
        if self.update_status is None:
            return None
        text = self.update_status.get("State", "")
        state = _UPDATE_STATE_OF.get(text)
        return state if state is not None else UpdateState.from_api(text)

    def set_update_status(self, state: UpdateState, message: str, started_at: str,
                          completed_at: str = "") -> None:
        """Move UpdateStatus.State along the table (model/update_state.py) and replace the
        status. An illegal move raises and changes nothing."""
        check_update_move(self.update_state, state)
        status: JSON = {"State": state.value, "StartedAt": started_at}
        if completed_at:
            status["CompletedAt"] = completed_at
        status["Message"] = message
        self.update_status = status

    def clear_update_status(self) -> None:
        """A new spec: no update status until the updater starts rolling it out (legal from
        every state)."""
        check_update_move(self.update_state, None)
        self.update_status = None

    def to_api(self) -> JSON:
        out = {**self.meta_api(), "Spec": self.spec}
        if self.previous_spec is not None:
            out["PreviousSpec"] = self.previous_spec
        out["Endpoint"] = self.endpoint or {"Spec": self.spec.get("EndpointSpec") or {}}
        if self.update_status is not None:
            out["UpdateStatus"] = self.update_status
        if self.job_status is not None:
            out["JobStatus"] = self.job_status
        return out


@dataclass(kw_only=True)
class Task(StoreObject):
    """spec: the service's TaskTemplate when the task was made (never rewritten)."""

    TABLE: ClassVar[str] = "tasks"
    service_id: str = ""
    slot: int = 0
    node_id: str = ""
    labels: JSON = field(default_factory=dict)
    status: TaskStatus = field(default_factory=TaskStatus)
    desired_state: TaskState = TaskState.RUNNING
    networks_attachments: list[JSON] = field(default_factory=list)
    job_iteration: JSON | None = None
    service_name: str = ""  # for the task's display name <service>.<slot>.<id>
    # The host-mode published ports the task was placed with (swarmkit's Task.Endpoint, reduced
    # to what a node acts on): {"Ports": [PortConfig with PublishMode "host", ...]}, or None.
    # Written by the scheduler when it assigns the task (its HostPortFilter counted these ports on
    # the node); the worker reports them as Status.PortStatus. Replaced, never edited. Not in the
    # Engine API (Docker's Task has no Endpoint).
    endpoint: JSON | None = None

    @property
    def name(self) -> str:
        return ""

    @property
    def display_name(self) -> str:
        return f"{self.service_name}.{self.slot or self.node_id}.{self.id}"

    def set_desired_state(self, state: TaskState) -> None:
        """Managers only. Moves forward only; a backwards move raises and changes nothing."""
        check_transition(self.desired_state, state, what="desired state")
        self.desired_state = state

    def to_api(self) -> JSON:
        out: JSON = {**self.meta_api(), "Labels": self.labels, "Spec": self.spec,
                     "ServiceID": self.service_id}
        if self.slot:
            out["Slot"] = self.slot
        out["NodeID"] = self.node_id
        out["Status"] = self.status.to_api()
        out["DesiredState"] = self.desired_state.api
        if self.networks_attachments:
            out["NetworksAttachments"] = self.networks_attachments
        if self.job_iteration is not None:
            out["JobIteration"] = self.job_iteration
        return out

    # Tasks are the bulk of all writes: their record, decoding and copy are written out by hand
    # (tests check that they cover every field, in field order, and that copies are independent).
    def to_record(self) -> JSON:
        # A task's __dict__ holds exactly its fields in field order (set so by __init__ and kept
        # by copy()), so the record starts as a copy of it; anything else is spelled out.
        # A state that is not a TaskState member takes the spelled-out path and its int().
        record = self.__dict__.copy()
        status = self.status
        state_number = _NUMBER_OF.get(status.state)
        desired_number = _NUMBER_OF.get(self.desired_state)
        if len(record) != _TASK_FIELD_COUNT or state_number is None or desired_number is None:
            return self._to_record_by_name()
        record["status"] = [state_number, status.timestamp, status.message, status.err,
                            status.container_status, status.port_status]
        record["desired_state"] = desired_number
        return record

    def _to_record_by_name(self) -> JSON:
        status = self.status
        return {"id": self.id, "version": self.version, "created_at": self.created_at,
                "updated_at": self.updated_at, "spec": self.spec, "service_id": self.service_id,
                "slot": self.slot, "node_id": self.node_id, "labels": self.labels,
                "status": [int(status.state), status.timestamp, status.message, status.err,
                           status.container_status, status.port_status],
                "desired_state": int(self.desired_state), "networks_attachments": self.networks_attachments,
                "job_iteration": self.job_iteration, "service_name": self.service_name,
                "endpoint": self.endpoint}

    @classmethod
    def from_record(cls, rec: JSON) -> Task:
        fields = dict(rec)
        state, timestamp, message, err, container_status, port_status = fields["status"]
        try:
            fields["status"] = TaskStatus(_STATE_OF[state], timestamp, message, err, container_status, port_status)
            fields["desired_state"] = _STATE_OF[fields["desired_state"]]
        except KeyError as exc:
            raise ValueError(f"task {fields.get('id')!r}: unknown task state {exc.args[0]!r}") from None
        return cls(**fields)

    def copy(self) -> Task:
        """Copies everything but the spec, which nobody rewrites (shared, read-only): a new status
        (its container and port status dicts shared, as they are replaced, never edited; so is the
        endpoint), new labels, and deep copies of the network attachments and job iteration."""
        twin = _new_object(type(self))
        twin.__dict__ = values = self.__dict__.copy()
        status = self.status
        twin_status = _new_object(TaskStatus)  # TaskStatus(...) costs a call to its __init__
        twin_status.state = status.state
        twin_status.timestamp = status.timestamp
        twin_status.message = status.message
        twin_status.err = status.err
        twin_status.container_status = status.container_status
        twin_status.port_status = status.port_status
        values["status"] = twin_status
        values["labels"] = dict(self.labels)
        attachments = self.networks_attachments
        values["networks_attachments"] = _copy.deepcopy(attachments) if attachments else []
        if self.job_iteration is not None:
            values["job_iteration"] = _copy.deepcopy(self.job_iteration)
        return twin


_TASK_FIELD_COUNT = len(dataclasses.fields(Task))


@dataclass(kw_only=True)
class Network(StoreObject):
    """spec: the create request (Name, Labels, Driver, IPAM, Internal, Attachable, Ingress, ...).

    The allocator (manager/allocator) fills in the rest; until then `ipam` is None:
    - `ipam`: swarmkit's IPAMOptions, what was allocated:
      {"Driver": {"Name": "default", "Options"?: {...}},
       "Configs": [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1", "Range"?: ..., "AuxiliaryAddresses"?: {...}}]}
    - `driver_state`: the overlay driver's allocation:
      {"Name": "overlay", "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4097", ...}}
    - `address_cursor`: per subnet, the last address handed out ({"10.0.1.0/24": "10.0.1.7"}), so
      addresses go out in ascending order, wrapping around, across leader changes too."""

    TABLE: ClassVar[str] = "networks"
    ipam: JSON | None = None
    driver_state: JSON = field(default_factory=dict)
    address_cursor: dict[str, str] = field(default_factory=dict)

    @property
    def allocated(self) -> bool:
        return bool(self.ipam and self.driver_state)

    @property
    def is_ingress(self) -> bool:
        return bool(self.spec.get("Ingress"))

    def _ipam_api(self) -> JSON:
        """The Engine API `IPAM` object: what was allocated, else what was asked for."""
        if not self.ipam:
            asked = self.spec.get("IPAM") or {}
            return {"Driver": asked.get("Driver") or "default", "Options": asked.get("Options"),
                    "Config": asked.get("Config") or []}
        driver = self.ipam.get("Driver") or {}
        configs = []
        for cfg in self.ipam.get("Configs") or []:
            out = {"Subnet": cfg.get("Subnet", "")}
            if cfg.get("Range"):
                out["IPRange"] = cfg["Range"]
            if cfg.get("Gateway"):
                out["Gateway"] = cfg["Gateway"]
            if cfg.get("AuxiliaryAddresses"):
                out["AuxiliaryAddresses"] = cfg["AuxiliaryAddresses"]
            configs.append(out)
        return {"Driver": driver.get("Name") or "default", "Options": driver.get("Options"), "Config": configs}

    def to_api(self) -> JSON:
        spec = self.spec
        return {
            "Name": spec.get("Name", ""), "Id": self.id, "Created": self.created_at, "Scope": "swarm",
            "Driver": self.driver_state.get("Name") or spec.get("Driver") or "overlay",
            "EnableIPv6": bool(spec.get("EnableIPv6", False)),
            "IPAM": self._ipam_api(),
            "Internal": bool(spec.get("Internal", False)), "Attachable": bool(spec.get("Attachable", False)),
            "Ingress": bool(spec.get("Ingress", False)),
            "ConfigFrom": spec.get("ConfigFrom") or {"Network": ""},
            "ConfigOnly": bool(spec.get("ConfigOnly", False)), "Containers": {},
            "Options": {**(spec.get("Options") or {}), **(self.driver_state.get("Options") or {})},
            "Labels": spec.get("Labels") or {},
        }

    def to_swarm_api(self) -> JSON:
        """The swarm Network object (types/swarm.Network) as `Task.NetworksAttachments` embeds it:
        {ID, Version, CreatedAt, UpdatedAt, Spec{Name, Labels, DriverConfiguration, Scope, ...},
        DriverState{Name, Options}, IPAMOptions{Driver{Name}, Configs[{Subnet, Gateway}]}}."""
        spec = self.spec
        driver_config: JSON = {}
        if spec.get("Driver"):
            driver_config["Name"] = spec["Driver"]
        if spec.get("Options"):
            driver_config["Options"] = spec["Options"]
        out_spec: JSON = {"Name": spec.get("Name", ""), "Labels": spec.get("Labels") or {},
                          "DriverConfiguration": driver_config}
        if spec.get("EnableIPv6"):
            out_spec["IPv6Enabled"] = True
        for key in ("Internal", "Attachable", "Ingress"):
            if spec.get(key):
                out_spec[key] = True
        asked = spec.get("IPAM")
        if asked:
            asked_driver: JSON = {}
            if asked.get("Driver"):
                asked_driver["Name"] = asked["Driver"]
            if asked.get("Options"):
                asked_driver["Options"] = asked["Options"]
            asked_out: JSON = {"Driver": asked_driver}
            configs = [_swarm_ipam_config(c.get("Subnet"), c.get("IPRange"), c.get("Gateway"))
                       for c in asked.get("Config") or []]
            if configs:
                asked_out["Configs"] = configs
            out_spec["IPAMOptions"] = asked_out
        if (spec.get("ConfigFrom") or {}).get("Network"):
            out_spec["ConfigFrom"] = {"Network": spec["ConfigFrom"]["Network"]}
        out_spec["Scope"] = "swarm"
        state: JSON = {}
        if self.driver_state.get("Name"):
            state["Name"] = self.driver_state["Name"]
        if self.driver_state.get("Options"):
            state["Options"] = dict(self.driver_state["Options"])
        out: JSON = {**self.meta_api(), "Spec": out_spec, "DriverState": state}
        if self.ipam:
            driver = self.ipam.get("Driver") or {}
            allocated: JSON = {"Driver": {k: v for k, v in (("Name", driver.get("Name")),
                                                             ("Options", driver.get("Options"))) if v}}
            configs = [_swarm_ipam_config(c.get("Subnet"), c.get("Range"), c.get("Gateway"))
                       for c in self.ipam.get("Configs") or []]
            if configs:
                allocated["Configs"] = configs
            out["IPAMOptions"] = allocated
        return out


def _swarm_ipam_config(subnet: str | None, ip_range: str | None, gateway: str | None) -> JSON:
    return {k: v for k, v in (("Subnet", subnet), ("Range", ip_range), ("Gateway", gateway)) if v}


@dataclass(kw_only=True)
class Secret(StoreObject):
    """spec: {Name, Labels, Data (base64), Driver?, Templating?}. Data is never returned."""

    TABLE: ClassVar[str] = "secrets"

    def to_api(self) -> JSON:
        return {**self.meta_api(), "Spec": {k: v for k, v in self.spec.items() if k != "Data"}}


@dataclass(kw_only=True)
class Config(StoreObject):
    """spec: {Name, Labels, Data (base64), Templating?}. Data is returned."""

    TABLE: ClassVar[str] = "configs"


OBJECT_TYPES: dict[str, type[StoreObject]] = {
    cls.TABLE: cls for cls in (Cluster, Node, Service, Task, Network, Secret, Config)
}
# Tables whose objects' names must be unique (case-insensitively).
UNIQUE_NAME_TABLES = frozenset({"clusters", "services", "networks", "secrets", "configs"})
# The Engine API's word for each table's objects, for error texts.
KIND_WORDS = {"clusters": "cluster", "nodes": "node", "services": "service", "tasks": "task",
              "networks": "network", "secrets": "secret", "configs": "config"}
