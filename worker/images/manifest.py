"""Manifests, indexes and platforms: the pure part of understanding an image.

An `ImportPlan` is what every image source (archive, registry) hands the store once all of an
image's blobs are verified in the blob store: the config digest, the ordered layer
descriptors, the manifest that ties them, and the references to tag. Platform matching picks
one manifest out of a Docker manifest list or an OCI index. Pure: no I/O.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from worker.images.errors import ImageError
from worker.images.reference import Reference

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ACCEPT_ALL = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
                 "armel": "arm", "i386": "386", "i686": "386"}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().lower().split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise ImageError(f"invalid platform {text!r}: expected os/arch[/variant]")
        arch = _ARCH_ALIASES.get(parts[1], parts[1])
        return cls(parts[0], arch, parts[2] if len(parts) == 3 else _DEFAULT_VARIANT.get(arch, ""))


def host_platform() -> Platform:
    machine = _platform.machine().lower() or "x86_64"
    arch = _ARCH_ALIASES.get(machine, machine)
    if machine.startswith("armv"):
        return Platform("linux", "arm", "v" + machine[4])
    return Platform("linux", arch, _DEFAULT_VARIANT.get(arch, ""))


def _match_score(want: Platform, desc_platform: dict[str, Any] | None) -> int:
    """0 = no match; higher is better (an exact variant beats a missing one)."""
    if not desc_platform:
        return 0
    os_name = str(desc_platform.get("os", "")).lower()
    arch = _ARCH_ALIASES.get(str(desc_platform.get("architecture", "")).lower(),
                             str(desc_platform.get("architecture", "")).lower())
    if os_name != want.os or arch != want.architecture:
        return 0
    variant = str(desc_platform.get("variant", "") or _DEFAULT_VARIANT.get(arch, ""))
    if not want.variant or not variant:
        return 1
    return 2 if variant == want.variant else 0


def pick_manifest(index: dict[str, Any], want: Platform) -> dict[str, Any]:
    """The descriptor in a manifest list / OCI index that serves `want`."""
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise ImageError("invalid manifest list: no 'manifests' array")
    best: tuple[int, dict[str, Any]] | None = None
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        score = _match_score(want, entry.get("platform"))
        if score and (best is None or score > best[0]):
            best = (score, entry)
    if best is None:
        offered = sorted({str(Platform(str(e.get("platform", {}).get("os", "")),
                                        str(e.get("platform", {}).get("architecture", "")),
                                        str(e.get("platform", {}).get("variant", ""))))
                          for e in entries if isinstance(e, dict) and e.get("platform")})
        raise ImageError(f"no matching manifest for {want} in the manifest list entries "
                         f"(offered: {', '.join(offered) or 'none'})")
    return best[1]


@dataclass(frozen=True)
class LayerDescriptor:
    digest: str
    media_type: str
    size: int


@dataclass
class ImportPlan:
    """An image whose config, manifest and layer blobs are all in the blob store, verified."""

    config_digest: str
    layers: list[LayerDescriptor]
    manifest_digest: str
    manifest_media_type: str
    tags: list[Reference] = field(default_factory=list)
    repo_digests: list[Reference] = field(default_factory=list)


def media_type_of(doc: dict[str, Any], content_type: str = "") -> str:
    """A manifest's media type: its own field, else the HTTP Content-Type, else by shape."""
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    ct = content_type.split(";")[0].strip()
    if ct in MANIFEST_TYPES or ct in INDEX_TYPES:
        return ct
    if "manifests" in doc:
        return OCI_INDEX
    if doc.get("schemaVersion") == 1:
        return DOCKER_MANIFEST_V1
    return OCI_MANIFEST


def parse_image_manifest(raw: bytes, media_type: str) -> tuple[dict[str, Any], list[LayerDescriptor]]:
    """The config descriptor and layer descriptors of a single-platform manifest."""
    if media_type in (DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED):
        raise ImageError("manifest schema 1 is not supported: the registry must serve schema 2 or OCI")
    try:
        doc = json.loads(raw)
        config = doc["config"]
        layers = [LayerDescriptor(str(entry["digest"]), str(entry.get("mediaType", OCI_LAYER_GZIP)),
                                  int(entry.get("size", 0))) for entry in doc["layers"]]
        str(config["digest"])
    except (ValueError, KeyError, TypeError) as e:
        raise ImageError(f"invalid image manifest: {e}") from e
    for layer in layers:
        if layer.media_type == DOCKER_FOREIGN_LAYER:
            raise ImageError("foreign (non-distributable) layers are not supported")
    return config, layers


def build_oci_manifest(config_digest: str, config_size: int, layers: list[LayerDescriptor]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                   for layer in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def layer_media_type_for(head: bytes) -> str:
    """The OCI media type for a layer blob, from its first bytes."""
    if head.startswith(b"\x1f\x8b"):
        return OCI_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return OCI_LAYER_ZSTD
    return OCI_LAYER
