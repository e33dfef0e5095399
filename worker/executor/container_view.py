"""How dockerd shows a container: the Engine API shapes of `GET /containers/json` and
`GET /containers/{id}/json`, built from what the executor records. Pure functions (time is a
parameter), so the shapes are tested without containers.

Theory of operation: a `ContainerView` is one container as the executor knows it (its
`ContainerConfig`, its `ContainerState`, when its record was made, the image ID); `summary` is
its row of `docker ps`, `inspect` its `docker inspect` document. Task containers carry the
labels dockerd sets on them (`com.docker.swarm.service.id/name`, `task.id/name`, `node.id`,
and an empty `com.docker.swarm.task`), their name is dockerd's `<service>.<slot>.<task id>`.
`find` resolves a reference as dockerd does: exact ID, exact name (with or without the leading
"/"), then a unique ID prefix; the `filters` of `GET /containers/json` are container_filters'.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from engineapi.http import ApiError
from engineapi.units import human_duration
from model import format_time
from model.endpoint import endpoint_mac
from worker.exec import ContainerState
from worker.executor.spec import ContainerConfig

STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
ZERO_TIME = "0001-01-01T00:00:00Z"
TASK_LABEL = "com.docker.swarm.task"


class NoSuchContainer(ApiError):
    def __init__(self, ref: str) -> None:
        super().__init__(404, f"No such container: {ref}")


@dataclass(frozen=True)
class ContainerView:
    config: ContainerConfig
    state: ContainerState
    created: float                 # Unix seconds
    image_id: str = ""
    log_path: str = ""
    standalone: dict[str, Any] | None = None   # the create record of a standalone container

    @property
    def auto_remove(self) -> bool:
        return bool(((self.standalone or {}).get("HostConfig") or {}).get("AutoRemove"))

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def name(self) -> str:
        return self.config.name or self.config.id

    @property
    def status(self) -> str:
        """dockerd's State.Status: created, running or exited."""
        return {"running": "running", "created": "created"}.get(self.state.status, "exited")

    @property
    def exit_code(self) -> int:
        return self.state.exit.exit_code if self.state.exit is not None else 0

    @property
    def labels(self) -> dict[str, str]:
        labels = dict(self.config.labels)
        if "com.docker.swarm.task.id" in labels:
            labels.setdefault(TASK_LABEL, "")
        return labels

    @property
    def finished_at(self) -> str:
        return self.state.exit.finished_at if self.state.exit is not None else ""


def find(views: list[ContainerView], ref: str) -> ContainerView:
    """Exact ID, exact name, unique ID prefix; 404 `No such container: ref` otherwise."""
    if not ref:
        raise NoSuchContainer(ref)
    name = ref.removeprefix("/")
    for v in views:
        if v.id == ref:
            return v
    for v in views:
        if v.name == name:
            return v
    found = [v for v in views if v.id.startswith(ref)]
    if len(found) > 1:
        raise ApiError(400, f"Multiple IDs found with provided prefix: {ref}")
    if not found:
        raise NoSuchContainer(ref)
    return found[0]


def _seconds(rfc3339: str) -> float | None:
    from worker.executor.logs import LogFormatError, timestamp_seconds
    if not rfc3339:
        return None
    try:
        return timestamp_seconds(rfc3339)
    except LogFormatError:
        return None


def status_text(view: ContainerView, now: float) -> str:
    """`docker ps`'s STATUS: "Up 3 minutes (healthy)", "Exited (137) 2 seconds ago", "Created"."""
    if view.status == "running":
        started = _seconds(view.state.started_at) or view.created
        text = f"Up {human_duration(now - started)}"
        health = (view.state.health or {}).get("Status")
        if health in ("starting", "healthy", "unhealthy"):
            text += f" (health: {health})" if health == "starting" else f" ({health})"
        return text
    if view.status == "created":
        return "Created"
    finished = _seconds(view.finished_at)
    ago = f" {human_duration(now - finished)} ago" if finished is not None else ""
    return f"Exited ({view.exit_code}){ago}"


def _mounts(config: ContainerConfig) -> list[dict[str, Any]]:
    out = []
    for m in config.mounts:
        entry: dict[str, Any] = {"Type": m.type, "Source": m.source, "Destination": m.target,
                                 "Mode": "", "RW": not m.read_only, "Propagation": m.propagation
                                 if m.type == "bind" else ""}
        if m.type == "volume":
            entry.update(Name=m.source, Driver="local")
        out.append(entry)
    return out


def endpoint_id(network_id: str, container_id: str) -> str:
    """The endpoint's 64-hex ID, by the rule the API's network views use
    (manager/api/local_networks.py `endpoint_id`), so inspect and network inspect agree."""
    return hashlib.sha256(f"{network_id}/{container_id}".encode()).hexdigest()


def _endpoint(view: ContainerView, net: dict[str, Any]) -> dict[str, Any]:
    address = str(net.get("address") or "")
    ip, _, prefix = address.partition("/")
    return {
        "IPAMConfig": net.get("ipam_config"), "Links": net.get("links") or None,
        "Aliases": list(net.get("aliases") or []) or None, "DriverOpts": net.get("driver_opts") or None,
        "MacAddress": str(net.get("mac") or (endpoint_mac(ip) if ip else "")),
        "NetworkID": str(net.get("id") or ""), "EndpointID": endpoint_id(str(net.get("id") or ""), view.id),
        "Gateway": str(net.get("gateway") or ""), "IPAddress": ip, "IPPrefixLen": int(prefix or 0),
        "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DNSNames": net.get("dns_names") or None,
    }


def _network_settings(view: ContainerView) -> dict[str, Any]:
    """`Networks`: one entry per attached network, by name (a task's attachments, a standalone
    container's networks); a container with a namespace of its own and nothing attached is on
    dockerd's `none`."""
    if view.config.networks:
        return {"Networks": {str(n.get("name") or n.get("id")): _endpoint(view, n) for n in view.config.networks}}
    return {"Networks": {}} if view.config.netns_path else {"Networks": {"none": {}}}


LEGACY_FIELDS = {"EndpointID": "", "Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                 "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": ""}


def _default_bridge_fields(view: ContainerView) -> dict[str, Any]:
    """Inspect's deprecated top-level NetworkSettings fields: the default bridge's endpoint's
    (empty when the container is not on it), as dockerd still shows them up to API 1.51."""
    bridge = next((n for n in view.config.networks if n.get("name") == "bridge"), None)
    if bridge is None:
        return dict(LEGACY_FIELDS)
    endpoint = _endpoint(view, bridge)
    return {key: endpoint[key] for key in LEGACY_FIELDS}


def _network_mode(view: ContainerView) -> str:
    return str(((view.standalone or {}).get("HostConfig") or {}).get("NetworkMode") or "default")


def _exposed(view: ContainerView) -> list[dict[str, Any]]:
    """A standalone container's exposed ports (`--expose`), unpublished: dockerd lists them
    in `Ports` with the private port only."""
    exposed = ((view.standalone or {}).get("Config") or {}).get("ExposedPorts") or {}
    out = []
    for key in exposed if isinstance(exposed, dict) else []:
        port, _, proto = str(key).partition("/")
        if port.isdigit():
            out.append({"PrivatePort": int(port), "Type": proto or "tcp"})
    return out


def summary(view: ContainerView) -> dict[str, Any]:
    """One row of `GET /containers/json`; `status_text` is filled in by `summaries`."""
    c = view.config
    return {
        "Id": c.id, "Names": ["/" + view.name], "Image": c.image or view.image_id,
        "ImageID": view.image_id, "Command": " ".join(c.args), "Created": int(view.created),
        "Ports": _exposed(view), "Labels": view.labels, "State": view.status, "Status": "",
        "HostConfig": {"NetworkMode": _network_mode(view)}, "NetworkSettings": _network_settings(view),
        "Mounts": _mounts(c),
    }


def summaries(views: list[ContainerView], now: float) -> list[dict[str, Any]]:
    """Rows newest first, as dockerd lists them."""
    out = []
    for v in sorted(views, key=lambda v: v.created, reverse=True):
        row = summary(v)
        row["Status"] = status_text(v, now)
        out.append(row)
    return out


def inspect(view: ContainerView) -> dict[str, Any]:
    """`GET /containers/{id}/json`."""
    c, st = view.config, view.state
    health = st.health
    state: dict[str, Any] = {
        "Status": view.status, "Running": view.status == "running", "Paused": False,
        "Restarting": False, "OOMKilled": bool(st.exit and st.exit.oom_killed), "Dead": False,
        "Pid": st.pid if view.status == "running" else 0, "ExitCode": view.exit_code,
        "Error": st.exit.error if st.exit is not None else "",
        "StartedAt": st.started_at or ZERO_TIME, "FinishedAt": view.finished_at or ZERO_TIME,
    }
    if health is not None:
        state["Health"] = health
    memory = c.resources.memory_bytes
    doc: dict[str, Any] = {
        "Id": c.id, "Created": format_time(view.created), "Path": c.args[0] if c.args else "",
        "Args": c.args[1:], "State": state, "Image": view.image_id, "ResolvConfPath": "",
        "HostnamePath": "", "HostsPath": "", "LogPath": view.log_path, "Name": "/" + view.name,
        "RestartCount": 0, "Driver": "overlay", "Platform": "linux", "MountLabel": "",
        "ProcessLabel": "", "AppArmorProfile": "", "ExecIDs": None,
        "HostConfig": {
            "NetworkMode": "default", "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "AutoRemove": False, "ReadonlyRootfs": c.read_only, "Memory": memory,
            "NanoCpus": c.resources.nano_cpus, "PidsLimit": c.resources.pids_limit or None,
            "ExtraHosts": None, "LogConfig": {"Type": "json-file", "Config": {}},
            "Isolation": "", "Init": None,
        },
        "GraphDriver": {"Name": "overlay", "Data": None},
        "Mounts": _mounts(c),
        "Config": {
            "Hostname": c.hostname or c.id[:12], "Domainname": "", "User": c.user,
            "AttachStdin": False, "AttachStdout": False, "AttachStderr": False, "Tty": c.tty,
            "OpenStdin": False, "StdinOnce": False, "Env": list(c.env), "Cmd": list(c.args),
            "Image": c.image or view.image_id, "Volumes": None, "WorkingDir": c.cwd,
            "Entrypoint": None, "OnBuild": None, "Labels": view.labels,
            "StopSignal": c.stop_signal, "StopTimeout": int(c.stop_grace),
        },
        "NetworkSettings": {"Bridge": "", "SandboxID": "", "SandboxKey": c.netns_path,
                            "Ports": {}, **_network_settings(view), **_default_bridge_fields(view)},
    }
    if view.standalone is not None:      # what docker create asked for, as dockerd echoes it
        doc["Config"].update(view.standalone.get("Config") or {})
        doc["HostConfig"].update(view.standalone.get("HostConfig") or {})
    return doc
