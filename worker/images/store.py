"""ImageStore: the node's images, addressed by ID (the config digest) and by references.

Layout under `<data-dir>/images/`:
  blobs/sha256/<hex>            configs, manifests, layer blobs (content-addressed, verified)
  layers/<chain-hex>/diff       each layer unpacked once, shared by every image using it
  images/<id-hex>.json          one record per image: manifest digest, layers, chain IDs
  repositories.json             {"refs": {"docker.io/library/busybox:latest": "sha256:..."}}
  tmp/                          blob writes in progress (cleared at start)

Invariants: an image record is written only after all its blobs are verified and all its
layers unpacked, so a record never points at a missing layer; references are written after the
record. Metadata changes are synchronous and happen on the event loop (so they are atomic with
respect to each other); only blob transfers and unpacking run in threads, serialised per
digest/chain ID by `KeyedLocks`. Garbage (blobs and layers no record references) is swept after
removals and failed imports, but only when no import is in flight, because an import's blobs
are unreferenced until its record lands. A failed pull or load therefore leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from worker.images.blobs import BlobStore, KeyedLocks
from worker.images.errors import ImageConflict, ImageError, ImageNotFound, InvalidReference
from worker.images.layers import LayerStore, chain_ids
from worker.images.manifest import ImportPlan, LayerDescriptor, Platform, host_platform
from worker.images.reference import (
    Reference,
    is_image_id,
    looks_like_id_prefix,
    parse_reference,
)
from worker.images.registry import RegistryAuth, RegistryClient

Progress = Callable[[dict[str, Any]], Awaitable[None]]
InUseCheck = Callable[[str], bool]
PULL_POLICIES = ("missing", "always", "never")


@dataclass
class ImageRecord:
    id: str
    config: dict[str, Any]
    manifest_digest: str
    manifest_media_type: str
    layers: list[LayerDescriptor]
    diff_ids: list[str]
    chain_ids: list[str]
    size: int
    loaded_at: float

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "manifest_digest": self.manifest_digest,
            "manifest_media_type": self.manifest_media_type,
            "layers": [layer.__dict__ for layer in self.layers],
            "diff_ids": self.diff_ids, "chain_ids": self.chain_ids, "size": self.size,
            "loaded_at": self.loaded_at,
        }


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


class ImageStore:
    def __init__(self, root: Path, *, platform: Platform | None = None,
                 in_use: InUseCheck | None = None,
                 credentials: Mapping[str, RegistryAuth] | None = None,
                 insecure_registries: Iterable[str] = ()) -> None:
        """`root` is `<data-dir>/images`. `in_use(image_id)` says whether a task uses an image.

        `credentials` maps a registry host (e.g. "registry.example:5000") to default
        credentials; `insecure_registries` are hosts spoken to over plain HTTP (loopback hosts
        and `localhost` always are).
        """
        self.root = root
        self.platform = platform or host_platform()
        self.in_use: InUseCheck = in_use or (lambda _image_id: False)
        self.credentials = dict(credentials or {})
        self.insecure_registries = set(insecure_registries)
        self.blobs = BlobStore(root)
        self.layers = LayerStore(root / "layers")
        self._images_dir = root / "images"
        self._images_dir.mkdir(parents=True, exist_ok=True)
        self._repos_path = root / "repositories.json"
        self.locks = KeyedLocks()
        self._images: dict[str, ImageRecord] = {}
        self._refs: dict[str, str] = {}
        self._imports_in_flight = 0
        self._sweep_pending = False
        self.blobs.clear_tmp()
        self.layers.clear_tmp()
        self._load_metadata()

    # ---- persistence -------------------------------------------------------------------

    def _load_metadata(self) -> None:
        for entry in os.scandir(self._images_dir):
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                raw = json.loads(Path(entry.path).read_text())
                config = json.loads(self.blobs.read_bytes(raw["id"]))
                record = ImageRecord(
                    id=raw["id"], config=config, manifest_digest=raw["manifest_digest"],
                    manifest_media_type=raw["manifest_media_type"],
                    layers=[LayerDescriptor(**layer) for layer in raw["layers"]],
                    diff_ids=raw["diff_ids"], chain_ids=raw["chain_ids"], size=raw["size"],
                    loaded_at=raw["loaded_at"])
            except (ValueError, KeyError, TypeError, ImageError):
                os.unlink(entry.path)  # a record whose blobs are gone is not an image
                continue
            if all(self.layers.has(c) for c in record.chain_ids):
                self._images[record.id] = record
            else:
                os.unlink(entry.path)
        if self._repos_path.exists():
            refs = json.loads(self._repos_path.read_text()).get("refs", {})
            self._refs = {ref: image_id for ref, image_id in refs.items() if image_id in self._images}

    def _save_refs(self) -> None:
        _write_json_atomic(self._repos_path, {"refs": self._refs})

    # ---- lookups -----------------------------------------------------------------------

    def images(self) -> list[ImageRecord]:
        return list(self._images.values())

    def refs_of(self, image_id: str) -> list[Reference]:
        return sorted((parse_reference(ref, default_tag=False) for ref, i in self._refs.items()
                       if i == image_id), key=lambda r: r.full())

    def tags_of(self, image_id: str) -> list[Reference]:
        return [r for r in self.refs_of(image_id) if r.tag]

    def digests_of(self, image_id: str) -> list[Reference]:
        return [r for r in self.refs_of(image_id) if r.digest]

    def get(self, name: str) -> ImageRecord:
        """Resolve an image ID, an ID prefix, or a reference; `ImageNotFound` otherwise."""
        return self._resolve(name)[0]

    def _resolve(self, name: str) -> tuple[ImageRecord, Reference | None]:
        if is_image_id(name):
            image_id = name if name.startswith("sha256:") else "sha256:" + name
            if image_id in self._images:
                return self._images[image_id], None
        ref: Reference | None = None
        try:
            ref = parse_reference(name)
        except InvalidReference:
            if not looks_like_id_prefix(name):
                raise
        if ref is not None:
            key = ref.with_digest(ref.digest).full() if ref.digest else ref.full()
            found = self._refs.get(key)
            if found is not None:
                return self._images[found], ref
        if looks_like_id_prefix(name):
            prefix = "sha256:" + name.removeprefix("sha256:")
            matches = [i for i in self._images if i.startswith(prefix)]
            if len(matches) == 1:
                return self._images[matches[0]], None
            if len(matches) > 1:
                raise ImageError(f"ambiguous image ID prefix {name!r} matches {len(matches)} images")
        raise ImageNotFound(ref.familiar() if ref is not None else name)

    def rootfs_layers(self, image: str | ImageRecord) -> list[Path]:
        """The image's unpacked layer dirs, top layer first: overlayfs `lowerdir=` order."""
        record = image if isinstance(image, ImageRecord) else self.get(image)
        paths = [self.layers.diff_path(c) for c in reversed(record.chain_ids)]
        for path in paths:
            if not path.is_dir():
                raise ImageError(f"image {record.short_id}: layer {path.parent.name[:12]} is missing "
                                 "from the store; remove and pull the image again")
        return paths

    def image_config(self, image: str | ImageRecord) -> dict[str, Any]:
        """The runtime config: Env, Entrypoint, Cmd, WorkingDir, User, ExposedPorts,
        Healthcheck, StopSignal, Labels (absent ones filled with empty defaults)."""
        record = image if isinstance(image, ImageRecord) else self.get(image)
        cfg = dict(record.config.get("config") or {})
        defaults: dict[str, Any] = {"Env": [], "Entrypoint": None, "Cmd": None, "WorkingDir": "",
                                    "User": "", "ExposedPorts": {}, "Healthcheck": None,
                                    "StopSignal": "", "Labels": {}, "Volumes": {}}
        for key, value in defaults.items():
            if cfg.get(key) is None:
                cfg[key] = value
        return cfg

    # ---- imports -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def importing(self) -> AsyncIterator[None]:
        """Brackets an import: garbage is not swept while one is in flight; a failed import
        triggers a sweep once the store is quiet, removing any blobs it left."""
        self._imports_in_flight += 1
        try:
            yield
        except BaseException:
            self._sweep_pending = True
            raise
        finally:
            self._imports_in_flight -= 1
            if self._imports_in_flight == 0 and self._sweep_pending:
                await self._sweep()

    async def install(self, plan: ImportPlan, progress: Progress | None = None) -> ImageRecord:
        """Unpack the plan's layers (once per chain ID) and record the image and its refs."""
        try:
            config = json.loads(self.blobs.read_bytes(plan.config_digest))
            diff_ids = [str(d) for d in config["rootfs"]["diff_ids"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ImageError(f"invalid image config {short(plan.config_digest)}: {e}") from e
        if len(diff_ids) != len(plan.layers):
            raise ImageError(f"invalid image {short(plan.config_digest)}: its config lists "
                             f"{len(diff_ids)} layers but its manifest has {len(plan.layers)}")
        chains = chain_ids(diff_ids)
        size = 0
        for layer, diff_id, chain in zip(plan.layers, diff_ids, chains, strict=True):
            async with self.locks.hold("layer:" + chain):
                if not self.layers.has(chain):
                    if progress:
                        await progress({"status": "Extracting", "id": short(layer.digest)})
                    await asyncio.to_thread(self.layers.install, chain, self.blobs.path(layer.digest),
                                            diff_id)
                size += self.layers.info(chain).size
            if progress:
                await progress({"status": "Pull complete", "id": short(layer.digest)})
        previous = self._images.get(plan.config_digest)
        record = ImageRecord(
            id=plan.config_digest, config=config, manifest_digest=plan.manifest_digest,
            manifest_media_type=plan.manifest_media_type, layers=plan.layers, diff_ids=diff_ids,
            chain_ids=chains, size=size, loaded_at=previous.loaded_at if previous else time.time())
        _write_json_atomic(self._images_dir / (record.id.removeprefix("sha256:") + ".json"),
                           record.to_json())
        self._images[record.id] = record
        for ref in [*plan.tags, *plan.repo_digests]:
            self._refs[ref.full()] = record.id
        self._save_refs()
        return record

    async def load(self, archive: Path) -> list[tuple[ImageRecord, list[Reference]]]:
        """Load a docker-save or OCI-layout archive; returns each image and the tags it got."""
        from worker.images.archive import read_archive

        async with self.importing():
            plans = await asyncio.to_thread(read_archive, archive, self.blobs, self.platform)
            out = []
            for plan in plans:
                out.append((await self.install(plan), plan.tags))
            return out

    async def pull(self, ref: str | Reference, *, auth: RegistryAuth | None = None,
                   progress: Progress | None = None, platform: Platform | None = None) -> ImageRecord:
        reference = parse_reference(ref) if isinstance(ref, str) else ref
        host = reference.registry_host
        client = RegistryClient(
            auth=auth or self.credentials.get(host) or self.credentials.get(reference.domain),
            insecure=host in self.insecure_registries)
        async with self.importing(), client:
            plan = await client.pull(reference, self.blobs, self.locks, platform or self.platform,
                                     progress)
            record = await self.install(plan, progress)
        if progress:
            await progress({"status": f"Digest: {plan.repo_digests[0].digest}"
                            if plan.repo_digests else f"Digest: {plan.manifest_digest}"})
        return record

    async def ensure(self, ref: str, *, pull: str = "missing", auth: RegistryAuth | None = None,
                     progress: Progress | None = None) -> ImageRecord:
        """The image for `ref`, pulled if absent (`pull="missing"`), always re-pulled
        (`"always"`), or never (`"never"`: `ImageNotFound` if absent). Every failure is an
        `ImageError` with a one-line message fit for a task status."""
        if pull not in PULL_POLICIES:
            raise ImageError(f"invalid pull policy {pull!r}: expected one of {', '.join(PULL_POLICIES)}")
        if pull != "always":
            try:
                return self.get(ref)
            except ImageNotFound:
                if pull == "never":
                    raise
        reference = parse_reference(ref)
        try:
            return await self.pull(reference, auth=auth, progress=progress)
        except ImageNotFound:
            raise
        except ImageError as e:
            if pull == "always":
                with contextlib.suppress(ImageNotFound):
                    return self.get(ref)  # a registry hiccup does not stop a cached image
            raise ImageError(f"pulling {reference.familiar()}: {e.message}") from e

    # ---- tags, removal, pruning ----------------------------------------------------------

    def tag(self, source: str, target: str) -> Reference:
        record = self.get(source)
        ref = parse_reference(target)
        if ref.digest:
            raise InvalidReference(f"refusing to create a tag with a digest reference: {target}")
        self._refs[ref.full()] = record.id
        self._save_refs()
        return ref

    async def remove(self, name: str, *, force: bool = False) -> list[dict[str, str]]:
        """`rmi`: untag a reference, deleting the image when its last tag goes.

        Named by reference: only that tag is removed while others remain. Named by ID: every
        reference goes (several tags need `force`). An image a task uses is never deleted; with
        `force` its tags are still removed.
        """
        record, ref = self._resolve(name)
        tags = self.tags_of(record.id)
        in_use = self.in_use(record.id)
        out: list[dict[str, str]] = []
        named_key = (ref.with_digest(ref.digest) if ref.digest else ref).full() if ref else None
        if ref is not None and any(t.full() != named_key for t in tags):
            self._refs.pop(str(named_key), None)  # other tags remain: just untag
            self._save_refs()
            return [{"Untagged": (ref.with_digest(ref.digest) if ref.digest else ref).familiar()}]
        if in_use and not force:
            raise ImageConflict(f"conflict: unable to delete {ref.familiar() if ref else record.short_id} "
                                f"(cannot be forced) - image {record.short_id} is being used by a task")
        if ref is None and len(tags) > 1 and not force:
            raise ImageConflict(f"conflict: unable to delete {record.short_id} (must be forced) - "
                                "image is referenced in multiple repositories")
        for r in self.refs_of(record.id):
            self._refs.pop(r.full(), None)
            out.append({"Untagged": r.familiar()})
        self._save_refs()
        if in_use:
            return out
        self._drop_record(record)
        out.append({"Deleted": record.id})
        await self._sweep()
        return out

    def _drop_record(self, record: ImageRecord) -> None:
        self._images.pop(record.id, None)
        for ref in [r for r, i in self._refs.items() if i == record.id]:
            del self._refs[ref]
        self._save_refs()
        with contextlib.suppress(FileNotFoundError):
            (self._images_dir / (record.id.removeprefix("sha256:") + ".json")).unlink()

    async def prune(self, *, all_images: bool = False,
                    label_filters: list[str] | None = None) -> dict[str, Any]:
        """Delete dangling images (untagged), or with `all_images` every image no task uses."""
        from worker.images.views import labels_match

        deleted: list[dict[str, str]] = []
        for record in list(self._images.values()):
            tags = self.tags_of(record.id)
            if tags and not all_images:
                continue
            if self.in_use(record.id) or not labels_match(record, label_filters or []):
                continue
            for r in self.refs_of(record.id):
                deleted.append({"Untagged": r.familiar()})
            self._drop_record(record)
            deleted.append({"Deleted": record.id})
        reclaimed = await self._sweep()
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    async def _sweep(self) -> int:
        """Delete blobs and layers no image record references; returns the bytes freed."""
        if self._imports_in_flight:
            self._sweep_pending = True
            return 0
        self._sweep_pending = False
        live_blobs: set[str] = set()
        live_chains: set[str] = set()
        for record in self._images.values():
            live_blobs.update([record.id, record.manifest_digest, *(lay.digest for lay in record.layers)])
            live_chains.update(record.chain_ids)
        dead_blobs = [d for d in self.blobs.digests() if d not in live_blobs]
        dead_chains = [c for c in self.layers.chain_ids() if c not in live_chains]

        def sweep() -> int:
            return sum(self.blobs.delete(d) for d in dead_blobs) + sum(
                self.layers.remove(c) for c in dead_chains)

        return await asyncio.to_thread(sweep)

    # ---- export ------------------------------------------------------------------------

    async def save(self, names: list[str], out: BinaryIO) -> None:
        """Write a docker-save archive (also a valid OCI layout) of `names` to `out`."""
        from worker.images.archive import write_archive

        if not names:
            raise ImageError("no images given to save")
        selected = [self._resolve(name) for name in names]
        # named by reference: that tag goes in the archive; named by ID: no tags
        entries = [(record, [ref] if ref is not None and ref.tag else []) for record, ref in selected]
        await asyncio.to_thread(write_archive, entries, self.blobs, out)
