"""Engine API views of images: `GET /images/json` summaries with filters, and inspect bodies.

Pure functions over the store's records; the API handlers only serialise what these return.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from worker.images.errors import ImageError
from worker.images.reference import Reference

if TYPE_CHECKING:
    from worker.images.store import ImageRecord, ImageStore

LIST_FILTERS = ("reference", "dangling", "label", "before", "since")


class InvalidFilter(ImageError):
    status = 400


def created_unix(record: ImageRecord) -> int:
    return int(created_datetime(record).timestamp())


def created_datetime(record: ImageRecord) -> datetime:
    text = str(record.config.get("created") or "")
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if not match:
        return datetime.fromtimestamp(record.loaded_at, UTC)
    base, frac, zone = match.groups()
    micro = (frac or ".0")[1:7].ljust(6, "0")
    tz = "+00:00" if zone in (None, "Z") else zone
    return datetime.fromisoformat(f"{base}.{micro}{tz}")


def _glob(pattern: str) -> re.Pattern[str]:
    """Path-style glob: `*` and `?` never cross `/`."""
    out = ""
    for ch in pattern:
        out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
    return re.compile(f"^{out}$")


def labels_match(record: ImageRecord, wanted: list[str]) -> bool:
    labels = (record.config.get("config") or {}).get("Labels") or {}
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _truthy(value: str, key: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise InvalidFilter(f"Invalid filter '{key}={value}': expected true or false")


def _ref_matches(ref: Reference, patterns: list[_Pattern]) -> bool:
    return any(p.matches(ref) for p in patterns)


class _Pattern:
    def __init__(self, text: str) -> None:
        self.has_tag = ":" in text.rsplit("/", 1)[-1]
        self.regex = _glob(text)

    def matches(self, ref: Reference) -> bool:
        names = [ref.familiar_name, ref.name]
        if self.has_tag:
            names = [ref.familiar(), ref.full()]
        return any(self.regex.match(n) for n in names)


def summary(store: ImageStore, record: ImageRecord, tags: list[Reference] | None = None) -> dict[str, Any]:
    shown = store.tags_of(record.id) if tags is None else tags
    return {
        "Id": record.id,
        "ParentId": "",
        "RepoTags": [t.familiar() for t in shown],
        "RepoDigests": [d.familiar() for d in store.digests_of(record.id)],
        "Created": created_unix(record),
        "Size": record.size,
        "SharedSize": -1,
        "VirtualSize": record.size,
        "Labels": (record.config.get("config") or {}).get("Labels") or {},
        "Containers": -1,
    }


def list_images(store: ImageStore, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    filters = filters or {}
    for key in filters:
        if key not in LIST_FILTERS:
            raise InvalidFilter(f"Invalid filter '{key}'")
    patterns = [_Pattern(p) for p in filters.get("reference", [])]
    dangling = [_truthy(v, "dangling") for v in filters.get("dangling", [])]
    before = [created_datetime(store.get(n)) for n in filters.get("before", [])]
    since = [created_datetime(store.get(n)) for n in filters.get("since", [])]
    out = []
    for record in sorted(store.images(), key=lambda r: created_datetime(r), reverse=True):
        tags = store.tags_of(record.id)
        if dangling and dangling[-1] != (not tags):
            continue
        if not labels_match(record, filters.get("label", [])):
            continue
        created = created_datetime(record)
        if any(created >= b for b in before) or any(created <= s for s in since):
            continue
        if patterns:
            tags = [t for t in tags if _ref_matches(t, patterns)]
            if not tags:
                continue
        out.append(summary(store, record, tags))
    return out


def inspect(store: ImageStore, record: ImageRecord) -> dict[str, Any]:
    config = record.config
    lowers = store.rootfs_layers(record)
    return {
        "Id": record.id,
        "RepoTags": [t.familiar() for t in store.tags_of(record.id)],
        "RepoDigests": [d.familiar() for d in store.digests_of(record.id)],
        "Parent": "",
        "Comment": config.get("comment", ""),
        "Created": str(config.get("created") or created_datetime(record).isoformat()),
        "DockerVersion": config.get("docker_version", ""),
        "Author": config.get("author", ""),
        "Config": store.image_config(record),
        "Architecture": config.get("architecture", ""),
        "Variant": config.get("variant") or None,
        "Os": config.get("os", ""),
        "Size": record.size,
        "VirtualSize": record.size,
        "GraphDriver": {"Name": "overlay2", "Data": {
            "LowerDir": ":".join(str(p) for p in lowers[1:]) or None,
            "UpperDir": str(lowers[0]),
        }},
        "RootFS": {"Type": "layers", "Layers": list(record.diff_ids)},
        "Descriptor": {"mediaType": record.manifest_media_type, "digest": record.manifest_digest,
                       "size": store.blobs.size(record.manifest_digest)},
        "Metadata": {"LastTagTime": datetime.fromtimestamp(record.loaded_at, UTC).isoformat()},
    }


def history(record: ImageRecord) -> list[dict[str, Any]]:
    """`GET /images/{name}/history`: newest first, sizes from the layers that exist."""
    entries = list(record.config.get("history") or [])
    layer_ids = iter(reversed(record.layers))
    out: list[dict[str, Any]] = []
    for entry in reversed(entries):
        empty = bool(entry.get("empty_layer"))
        layer = None if empty else next(layer_ids, None)
        out.append({"Id": record.id if not out else "<missing>",
                    "Created": created_unix_text(str(entry.get("created", ""))),
                    "CreatedBy": entry.get("created_by", ""), "Tags": None,
                    "Size": layer.size if layer else 0, "Comment": entry.get("comment", "")})
    return out


def created_unix_text(text: str) -> int:
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", text)
    if not match:
        return 0
    return int(datetime.fromisoformat(match.group(1) + "+00:00").timestamp())
