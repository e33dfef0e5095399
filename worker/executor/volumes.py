"""The local volume driver: named directories under `<data-dir>/volumes/<name>/_data`.

Theory of operation: a volume is a directory plus `meta.json` (driver, labels, options, creation
time). Which containers use it is recorded as empty files `refs/<container-id>`, so the in-use
check survives a daemon restart and needs no in-memory registry; cleanup drops refs of
containers that no longer exist. A volume is created on its first mount (`acquire`); its data
outlives every container. Removing a volume in use is refused; `prune` removes only unused
volumes (anonymous ones by default, all unused ones with `all_volumes`).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
ANONYMOUS_LABEL = "com.docker.volume.anonymous"


class VolumeError(Exception):
    """A volume operation refused; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


class VolumeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise VolumeError(400, f"invalid volume name {name!r}: must match {NAME_RE.pattern}")
        return self.root / name

    def data_path(self, name: str) -> Path:
        return self._dir(name) / "_data"

    def exists(self, name: str) -> bool:
        return (self._dir(name) / "meta.json").is_file()

    def create(self, name: str = "", *, driver: str = "local", labels: dict[str, str] | None = None,
               options: dict[str, str] | None = None) -> dict[str, Any]:
        """Create (or return the existing) volume; an empty name makes an anonymous one."""
        if driver not in ("", "local"):
            raise VolumeError(400, f"volume driver {driver!r} is not supported (only local)")
        if options:
            raise VolumeError(400, f"the local driver takes no options (got {sorted(options)})")
        labels = dict(labels or {})
        if not name:
            name = secrets.token_hex(32)
            labels.setdefault(ANONYMOUS_LABEL, "")
        d = self._dir(name)
        if self.exists(name):
            return self.inspect(name)
        (d / "_data").mkdir(parents=True, exist_ok=True)
        (d / "refs").mkdir(exist_ok=True)
        meta = {"Driver": "local", "Labels": labels, "Options": {}, "CreatedAt": _now()}
        tmp = d / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(d / "meta.json")
        return self.inspect(name)

    def users(self, name: str) -> list[str]:
        refs = self._dir(name) / "refs"
        return sorted(p.name for p in refs.iterdir()) if refs.is_dir() else []

    def inspect(self, name: str, *, with_usage: bool = False) -> dict[str, Any]:
        d = self._dir(name)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except FileNotFoundError:
            raise VolumeError(404, f"get {name}: no such volume") from None
        out: dict[str, Any] = {
            "Name": name, "Driver": meta.get("Driver", "local"),
            "Mountpoint": str(d / "_data"), "CreatedAt": meta.get("CreatedAt", ""),
            "Labels": meta.get("Labels") or {}, "Scope": "local",
            "Options": meta.get("Options") or {},
        }
        if with_usage:
            out["UsageData"] = {"Size": _dir_size(d / "_data"), "RefCount": len(self.users(name))}
        return out

    def list(self) -> list[dict[str, Any]]:
        out = []
        for d in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if (d / "meta.json").is_file() and NAME_RE.match(d.name):
                out.append(self.inspect(d.name))
        return out

    def acquire(self, name: str, container_id: str, labels: dict[str, str] | None = None) -> Path:
        """Mark `name` used by the container (creating it on first mount); its data dir."""
        if not self.exists(name):
            self.create(name, labels=labels)
        (self._dir(name) / "refs").mkdir(exist_ok=True)
        (self._dir(name) / "refs" / container_id).touch()
        return self.data_path(name)

    def release(self, name: str, container_id: str) -> None:
        try:
            (self._dir(name) / "refs" / container_id).unlink()
        except FileNotFoundError:
            pass

    def release_all(self, container_id: str) -> None:
        """Drop every ref the container holds (used when it is removed or reaped)."""
        for d in self.root.iterdir():
            ref = d / "refs" / container_id
            if ref.exists():
                ref.unlink()

    def drop_refs_except(self, live_containers: set[str]) -> None:
        for d in self.root.iterdir():
            refs = d / "refs"
            if refs.is_dir():
                for ref in refs.iterdir():
                    if ref.name not in live_containers:
                        ref.unlink()

    def remove(self, name: str, *, force: bool = False) -> None:
        if not self.exists(name):
            if force:
                return
            raise VolumeError(404, f"get {name}: no such volume")
        users = self.users(name)
        if users:
            raise VolumeError(409, f"remove {name}: volume is in use - [{', '.join(users)}]")
        shutil.rmtree(self._dir(name))

    def prune(self, *, all_volumes: bool = False,
              labels: dict[str, str | None] | None = None) -> dict[str, Any]:
        """Remove unused volumes (anonymous only unless `all_volumes`); label filters: a key
        with None matches presence, with a value matches equality."""
        deleted, reclaimed = [], 0
        for vol in self.list():
            name = vol["Name"]
            if self.users(name):
                continue
            if not all_volumes and ANONYMOUS_LABEL not in vol["Labels"]:
                continue
            if labels and not all(
                    k in vol["Labels"] and (v is None or vol["Labels"][k] == v)
                    for k, v in labels.items()):
                continue
            reclaimed += _dir_size(self.data_path(name))
            shutil.rmtree(self._dir(name))
            deleted.append(name)
        return {"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}
