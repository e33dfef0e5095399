"""The worker's image store: content-addressed blobs, shared unpacked layers, image sources
(docker-save and OCI archives, OCI distribution registries) and the Engine API image routes."""

from worker.images.errors import (
    ArchiveError,
    DigestMismatch,
    ImageConflict,
    ImageError,
    ImageNotFound,
    InvalidReference,
    LayerError,
    RegistryError,
)
from worker.images.manifest import Platform, host_platform
from worker.images.reference import Reference, parse_reference
from worker.images.registry import RegistryAuth
from worker.images.store import ImageRecord, ImageStore

__all__ = [
    "ArchiveError", "DigestMismatch", "ImageConflict", "ImageError", "ImageNotFound", "ImageRecord",
    "ImageStore", "InvalidReference", "LayerError", "Platform", "Reference", "RegistryAuth",
    "RegistryError", "host_platform", "parse_reference",
]
