"""Image archives: reading docker-save and OCI image-layout tars, and writing them.

Reading (blocking; the store runs it in a thread): the tar is opened for random access
(gzip/bzip2/xz-compressed archives are accepted). `manifest.json` means docker-save (config and
layer files named by path); otherwise `index.json` + `oci-layout` means an OCI layout
(everything under `blobs/sha256/`, reached through the index, which may nest; a multi-platform
index is narrowed to the node's platform). Every blob is copied into the blob store and
verified — by its name where the format names it by digest — before an `ImportPlan` is returned,
so a corrupt or truncated archive fails before anything is recorded.

Writing produces an archive that is both: `manifest.json` + `repositories` for docker-save
readers, and `oci-layout` + `index.json` + `blobs/sha256/` for OCI readers, sharing one copy of
each blob.
"""

from __future__ import annotations

import io
import json
import lzma
import tarfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from worker.images.blobs import BlobStore, sha256_digest
from worker.images.errors import ArchiveError, ImageError
from worker.images.manifest import (
    INDEX_TYPES,
    ImportPlan,
    LayerDescriptor,
    Platform,
    build_oci_manifest,
    layer_media_type_for,
    media_type_of,
    parse_image_manifest,
    pick_manifest,
)
from worker.images.reference import Reference, parse_reference

if TYPE_CHECKING:
    from worker.images.store import ImageRecord

_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
MAX_JSON_BYTES = 16 * 1024 * 1024


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


class _Archive:
    def __init__(self, tf: tarfile.TarFile) -> None:
        self.tf = tf
        self.members = {_norm(m.name): m for m in tf.getmembers()}

    def member(self, name: str) -> tarfile.TarInfo:
        key = _norm(name)
        member = self.members.get(key)
        if member is None:
            raise ArchiveError(f"invalid archive: {name} is missing")
        while member.issym() or member.islnk():  # docker-save layer paths may be links
            target = member.linkname if member.islnk() else str(Path(key).parent / member.linkname)
            member = self.members.get(_norm(str(Path(target))))
            if member is None:
                raise ArchiveError(f"invalid archive: {name} is a dangling link")
        if not member.isreg():
            raise ArchiveError(f"invalid archive: {name} is not a regular file")
        return member

    def open(self, name: str) -> BinaryIO:
        f = self.tf.extractfile(self.member(name))
        if f is None:
            raise ArchiveError(f"invalid archive: {name} has no data")
        return f  # type: ignore[return-value]

    def read_json(self, name: str) -> Any:
        member = self.member(name)
        if member.size > MAX_JSON_BYTES:
            raise ArchiveError(f"invalid archive: {name} is too large for a JSON document")
        raw = self.open(name).read()
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ArchiveError(f"invalid archive: {name} is not valid JSON: {e}") from e

    def read_bytes(self, name: str) -> bytes:
        return self.open(name).read()

    def has(self, name: str) -> bool:
        return _norm(name) in self.members


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def read_archive(path: Path, blobs: BlobStore, platform: Platform) -> list[ImportPlan]:
    """Copy an archive's images into `blobs`; returns one plan per image. Raises ArchiveError."""
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, EOFError, OSError):
        raise ArchiveError("invalid archive: not a tar file (plain, gzip, bzip2 or xz)") from None
    try:
        with tf:
            archive = _Archive(tf)
            if archive.has("manifest.json"):
                return _read_docker_save(archive, blobs)
            if archive.has("index.json") and archive.has("oci-layout"):
                return _read_oci_layout(archive, blobs, platform)
            raise ArchiveError("invalid archive: neither manifest.json (docker save) nor "
                               "index.json + oci-layout (OCI image layout) found")
    except ArchiveError:
        raise
    except ImageError as e:
        raise ArchiveError(f"invalid archive: {e.message}") from e
    except _READ_ERRORS as e:
        detail = " ".join(str(e).split())
        raise ArchiveError(f"invalid archive (corrupt or truncated): {detail}") from e


def _copy_blob(archive: _Archive, name: str, blobs: BlobStore, expected: str | None) -> LayerDescriptor:
    src = archive.open(name)
    head = src.read(6)
    with blobs.writer(expected, name) as writer:
        writer.write(head)
        while chunk := src.read(1024 * 1024):
            writer.write(chunk)
        digest = writer.commit()
        return LayerDescriptor(digest, layer_media_type_for(head), writer.size)


def _digest_from_name(name: str) -> str | None:
    """`blobs/sha256/<hex>` or `<hex>.json` name their digest; legacy `<id>/layer.tar` do not."""
    stem = Path(name).name.removesuffix(".json").removesuffix(".tar")
    if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem):
        return "sha256:" + stem
    return None


def _read_docker_save(archive: _Archive, blobs: BlobStore) -> list[ImportPlan]:
    manifest = archive.read_json("manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ArchiveError("invalid archive: manifest.json is not a non-empty list")
    plans = []
    for entry in manifest:
        try:
            config_name = str(entry["Config"])
            layer_names = [str(n) for n in entry["Layers"]]
            repo_tags = [str(t) for t in entry.get("RepoTags") or []]
        except (KeyError, TypeError) as e:
            raise ArchiveError(f"invalid archive: bad manifest.json entry: {e}") from e
        config_raw = archive.read_bytes(config_name)
        config_digest = blobs.put_bytes(config_raw, _digest_from_name(config_name), f"config {config_name}")
        layers = [_copy_blob(archive, name, blobs, _digest_from_name(name) if name.startswith("blobs/")
                             else None) for name in layer_names]
        manifest_raw = build_oci_manifest(config_digest, len(config_raw), layers)
        manifest_digest = blobs.put_bytes(manifest_raw)
        plans.append(ImportPlan(config_digest=config_digest, layers=layers,
                                manifest_digest=manifest_digest,
                                manifest_media_type=media_type_of(json.loads(manifest_raw)),
                                tags=[parse_reference(t) for t in repo_tags]))
    return plans


def _oci_ref_name(annotations: dict[str, Any]) -> Reference | None:
    for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
        value = annotations.get(key)
        if isinstance(value, str) and ("/" in value or ":" in value):
            try:
                return parse_reference(value)
            except ImageError:
                continue
    return None


def _read_oci_layout(archive: _Archive, blobs: BlobStore, platform: Platform) -> list[ImportPlan]:
    layout = archive.read_json("oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise ArchiveError("invalid archive: oci-layout has no imageLayoutVersion")
    index = archive.read_json("index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ArchiveError("invalid archive: index.json has no manifests")
    plans: dict[str, ImportPlan] = {}
    for desc in index["manifests"]:
        ref = _oci_ref_name(desc.get("annotations") or {})
        digest = str(desc["digest"])
        raw = archive.read_bytes(_blob_name(digest))
        if sha256_digest(raw) != digest:
            raise ArchiveError(f"invalid archive: manifest {digest} does not match its digest")
        media_type = media_type_of(json.loads(raw), str(desc.get("mediaType", "")))
        for _depth in range(4):  # nested indexes (docker's own layout nests one level)
            if media_type not in INDEX_TYPES:
                break
            chosen = pick_manifest(json.loads(raw), platform)
            digest = str(chosen["digest"])
            raw = archive.read_bytes(_blob_name(digest))
            if sha256_digest(raw) != digest:
                raise ArchiveError(f"invalid archive: manifest {digest} does not match its digest")
            media_type = media_type_of(json.loads(raw), str(chosen.get("mediaType", "")))
        config_desc, layer_descs = parse_image_manifest(raw, media_type)
        blobs.put_bytes(raw, digest, f"manifest {digest}")
        config_digest = str(config_desc["digest"])
        _copy_blob(archive, _blob_name(config_digest), blobs, config_digest)
        for layer in layer_descs:
            _copy_blob(archive, _blob_name(layer.digest), blobs, layer.digest)
        plan = plans.setdefault(digest, ImportPlan(config_digest=config_digest, layers=layer_descs,
                                                   manifest_digest=digest, manifest_media_type=media_type))
        if ref is not None:
            plan.tags.append(ref)
    return list(plans.values())


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


def write_archive(entries: list[tuple[ImageRecord, list[Reference]]], blobs: BlobStore,
                  out: BinaryIO) -> None:
    """Write `entries` (image, tags to record) as a docker-save + OCI-layout tar to `out`."""
    now = time.time()
    written: set[str] = set()
    docker_manifest: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        def add_blob(digest: str) -> str:
            name = _blob_name(digest)
            if digest not in written:
                info = tarfile.TarInfo(name)
                info.size = blobs.size(digest)
                info.mtime = int(now)
                info.mode = 0o644
                with blobs.open(digest) as f:
                    tf.addfile(info, f)
                written.add(digest)
            return name

        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = int(now)
            tf.addfile(info)
        for record, tags in entries:
            config_name = add_blob(record.id)
            layer_names = [add_blob(layer.digest) for layer in record.layers]
            add_blob(record.manifest_digest)
            docker_manifest.append({"Config": config_name,
                                    "RepoTags": [t.familiar() for t in tags] or None,
                                    "Layers": layer_names})
            desc = {"mediaType": record.manifest_media_type, "digest": record.manifest_digest,
                    "size": blobs.size(record.manifest_digest)}
            for tag in tags:
                repositories.setdefault(tag.familiar_name, {})[str(tag.tag)] = \
                    record.layers[-1].digest.removeprefix("sha256:") if record.layers else ""
                index.append({**desc, "annotations": {"io.containerd.image.name": tag.full(),
                                                      "org.opencontainers.image.ref.name": str(tag.tag)}})
            if not tags:
                index.append(desc)
        _add_bytes(tf, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), now)
        _add_bytes(tf, "index.json", json.dumps({"schemaVersion": 2, "mediaType":
                                                 "application/vnd.oci.image.index.v1+json",
                                                 "manifests": index}).encode(), now)
        _add_bytes(tf, "manifest.json", json.dumps(docker_manifest).encode(), now)
        if repositories:
            _add_bytes(tf, "repositories", json.dumps(repositories).encode(), now)
