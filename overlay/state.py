"""What a daemon remembers about its overlay data path across restarts, under its run_dir.

    <run_dir>/netns/n-<network id>     the network's namespace (nsfs bind mount)
    <run_dir>/netns/s-<sandbox key>    a sandbox's namespace
    <run_dir>/networks/<id>.json       the spec a network was built from
    <run_dir>/sandboxes/<key>.json     a sandbox's attachments and its gateway-bridge address

A record is written before the kernel objects it describes and removed after them, so a
crash leaves at worst a record without objects (repaired or dropped on adopt), never an
object nobody knows about. Gateway addresses are allocated from the sandbox records only,
so an address is never handed out twice across restarts. Writes are atomic (rename) but
not fsynced: the records describe kernel objects that a reboot destroys anyway, and a
crashed process's writes are safe in the page cache.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from overlay.plan import network_netns_name, sandbox_netns_name
from overlay.spec import OverlaySpec, check_name


@dataclass(frozen=True)
class AttachmentRecord:
    network_id: str
    address: IPv4Interface
    ifname: str


@dataclass(frozen=True)
class SandboxRecord:
    key: str
    attachments: tuple[AttachmentRecord, ...] = ()
    gateway: IPv4Interface | None = None       # its address on the gateway bridge, if any
    gateway_ifname: str | None = None


def spec_to_json(spec: OverlaySpec) -> dict[str, Any]:
    return {"network_id": spec.network_id, "vni": spec.vni, "subnet": str(spec.subnet),
            "gateway": str(spec.gateway), "mtu": spec.mtu, "internal": spec.internal}


def spec_from_json(data: dict[str, Any]) -> OverlaySpec:
    return OverlaySpec(network_id=data["network_id"], vni=int(data["vni"]),
                       subnet=IPv4Network(data["subnet"]), gateway=IPv4Address(data["gateway"]),
                       mtu=int(data["mtu"]), internal=bool(data["internal"]))


def sandbox_to_json(record: SandboxRecord) -> dict[str, Any]:
    return {
        "key": record.key,
        "attachments": [{"network_id": a.network_id, "address": str(a.address), "ifname": a.ifname}
                        for a in record.attachments],
        "gateway": str(record.gateway) if record.gateway else None,
        "gateway_ifname": record.gateway_ifname,
    }


def sandbox_from_json(data: dict[str, Any]) -> SandboxRecord:
    return SandboxRecord(
        key=data["key"],
        attachments=tuple(AttachmentRecord(a["network_id"], IPv4Interface(a["address"]), a["ifname"])
                          for a in data.get("attachments", ())),
        gateway=IPv4Interface(data["gateway"]) if data.get("gateway") else None,
        gateway_ifname=data.get("gateway_ifname"),
    )


@dataclass
class StateDir:
    run_dir: Path
    netns_dir: Path = field(init=False)
    networks_dir: Path = field(init=False)
    sandboxes_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.netns_dir = self.run_dir / "netns"
        self.networks_dir = self.run_dir / "networks"
        self.sandboxes_dir = self.run_dir / "sandboxes"

    def make_dirs(self) -> None:
        for d in (self.networks_dir, self.sandboxes_dir, self.netns_dir):
            d.mkdir(parents=True, exist_ok=True)

    def network_netns(self, network_id: str) -> Path:
        return self.netns_dir / network_netns_name(network_id)

    def sandbox_netns(self, key: str) -> Path:
        return self.netns_dir / sandbox_netns_name(key)

    # networks

    def save_network(self, spec: OverlaySpec) -> None:
        _write_json(self.networks_dir / f"{spec.network_id}.json", spec_to_json(spec))

    def load_networks(self) -> dict[str, OverlaySpec]:
        found = {}
        for path in sorted(self.networks_dir.glob("*.json")):
            data = _read_json(path)
            with contextlib.suppress(KeyError, TypeError, ValueError):
                if data is not None:
                    spec = spec_from_json(data)
                    found[spec.network_id] = spec
        return found

    def drop_network(self, network_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.networks_dir / f"{check_name('network id', network_id)}.json").unlink()

    # sandboxes

    def save_sandbox(self, record: SandboxRecord) -> None:
        _write_json(self.sandboxes_dir / f"{check_name('sandbox key', record.key)}.json", sandbox_to_json(record))

    def load_sandboxes(self) -> dict[str, SandboxRecord]:
        found = {}
        for path in sorted(self.sandboxes_dir.glob("*.json")):
            data = _read_json(path)
            with contextlib.suppress(KeyError, TypeError, ValueError):
                if data is not None:
                    record = sandbox_from_json(data)
                    found[record.key] = record
        return found

    def drop_sandbox(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.sandboxes_dir / f"{check_name('sandbox key', key)}.json").unlink()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A record, or None for one that is unreadable. An unreadable or malformed record is
    treated as absent: adopt() then removes what it described, as after a crash."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
