"""ImageStore: loading archives, tags, removal, pruning, save round-trip, and clean failures."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.support.images import (
    build_busybox_image,
    import_into_store,
    write_docker_save,
    write_oci_layout,
)
from worker.images import (
    ArchiveError,
    DigestMismatch,
    ImageConflict,
    ImageError,
    ImageNotFound,
    ImageStore,
)
from worker.images.views import list_images


def _leftovers(store: ImageStore) -> tuple[list[str], list[str], list[str]]:
    return (sorted(store.blobs.digests()), store.layers.chain_ids(),
            os.listdir(store.blobs.tmp_dir))


async def test_load_docker_save_archive(tmp_path: Path) -> None:
    image = build_busybox_image()
    store = ImageStore(tmp_path / "images")
    archive = write_docker_save(image, tmp_path / "a.tar", ["busybox:latest", "example.com/x/y:1"])
    [(record, tags)] = await store.load(archive)
    assert record.id == image.image_id
    assert [t.familiar() for t in tags] == ["busybox:latest", "example.com/x/y:1"]
    assert store.get("busybox").id == store.get("example.com/x/y:1").id == record.id
    assert store.get(record.id[7:19]).id == record.id  # ID prefix
    lowers = store.rootfs_layers("busybox:latest")
    assert len(lowers) == 2 and (lowers[1] / "bin/busybox").is_file()
    assert (lowers[0] / "etc/platform").is_file()  # top layer first
    cfg = store.image_config("busybox")
    assert cfg["WorkingDir"] == "/home/app" and cfg["StopSignal"] == "SIGTERM"
    assert cfg["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]
    assert cfg["Labels"] == {"org.shoal.test": "busybox"} and "8080/tcp" in cfg["ExposedPorts"]
    # metadata survives a restart of the store
    again = ImageStore(tmp_path / "images")
    assert again.get("busybox").id == record.id and again.rootfs_layers("busybox") == lowers


async def test_load_oci_layout_multi_platform_picks_the_node_platform(tmp_path: Path) -> None:
    amd64 = build_busybox_image()
    arm64 = build_busybox_image(arch="arm64", variant="v8")
    archive = write_oci_layout([arm64, amd64], tmp_path / "oci.tar", "registry.test/multi:2")
    store = ImageStore(tmp_path / "images")
    [(record, _)] = await store.load(archive)
    assert record.id == amd64.image_id != arm64.image_id
    assert store.get("registry.test/multi:2").config["architecture"] == "amd64"


async def test_layers_are_shared_between_images(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    a = await import_into_store(store, build_busybox_image(), tmp_path, "a:1")
    b = await import_into_store(store, build_busybox_image(cmd=["sleep", "1"]), tmp_path, "b:1")
    assert a.id != b.id and a.chain_ids == b.chain_ids
    assert len(store.layers.chain_ids()) == 2
    await store.remove("a:1")
    assert store.rootfs_layers("b:1")  # b still has its (shared) layers


async def test_tag_ls_rm_save_round_trip(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    image = build_busybox_image()
    await import_into_store(store, image, tmp_path, "busybox:latest")
    store.tag("busybox", "mirror.test/tools/busybox:v1")
    rows = list_images(store)
    assert rows[0]["RepoTags"] == ["busybox:latest", "mirror.test/tools/busybox:v1"]
    assert [r["RepoTags"] for r in list_images(store, {"reference": ["busybox"]})] == [["busybox:latest"]]
    assert list_images(store, {"reference": ["mirror.test/*/busybox:v*"]})[0]["Id"] == image.image_id
    assert list_images(store, {"dangling": ["true"]}) == []
    assert list_images(store, {"label": ["org.shoal.test=busybox"]})
    assert list_images(store, {"label": ["org.shoal.test=other"]}) == []

    buf = io.BytesIO()
    await store.save(["mirror.test/tools/busybox:v1"], buf)
    (tmp_path / "saved.tar").write_bytes(buf.getvalue())
    with tarfile.open(tmp_path / "saved.tar") as tf:
        names = tf.getnames()
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"manifest.json", "index.json", "oci-layout", "repositories"} <= set(names)
    assert manifest[0]["RepoTags"] == ["mirror.test/tools/busybox:v1"]

    assert await store.remove("busybox") == [{"Untagged": "busybox:latest"}]  # another tag remains
    out = await store.remove("mirror.test/tools/busybox:v1")
    assert out == [{"Untagged": "mirror.test/tools/busybox:v1"}, {"Deleted": image.image_id}]
    assert store.images() == [] and _leftovers(store) == ([], [], [])

    fresh = ImageStore(tmp_path / "fresh")
    [(record, tags)] = await fresh.load(tmp_path / "saved.tar")
    assert record.id == image.image_id and [t.familiar() for t in tags] == ["mirror.test/tools/busybox:v1"]
    # the saved archive is also a valid OCI layout on its own
    with tarfile.open(tmp_path / "saved.tar") as src, tarfile.open(tmp_path / "oci-only.tar", "w") as dst:
        for member in src.getmembers():
            if member.name not in ("manifest.json", "repositories"):
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    oci = ImageStore(tmp_path / "oci")
    [(record, _)] = await oci.load(tmp_path / "oci-only.tar")
    assert record.id == image.image_id


async def test_rm_by_id_with_several_tags_needs_force_and_in_use_is_refused(tmp_path: Path) -> None:
    in_use: set[str] = set()
    store = ImageStore(tmp_path / "images", in_use=lambda image_id: image_id in in_use)
    record = await import_into_store(store, build_busybox_image(), tmp_path, "busybox:latest")
    store.tag("busybox", "busybox:other")
    with pytest.raises(ImageConflict, match="must be forced"):
        await store.remove(record.id)
    in_use.add(record.id)
    await store.remove("busybox:other")
    with pytest.raises(ImageConflict, match="being used by a task"):
        await store.remove("busybox:latest")
    assert store.get("busybox").id == record.id
    assert (await store.prune(all_images=True))["ImagesDeleted"] is None
    in_use.clear()
    out = await store.remove(record.id, force=True)
    assert out[-1] == {"Deleted": record.id}


async def test_prune_removes_dangling_images(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    old = await import_into_store(store, build_busybox_image(), tmp_path, "app:1")
    new = await import_into_store(store, build_busybox_image(cmd=["true"]), tmp_path, "app:1")
    assert store.tags_of(old.id) == [] and [r["Id"] for r in list_images(store, {"dangling": ["true"]})] \
        == [old.id]
    result = await store.prune()
    assert result["ImagesDeleted"] == [{"Deleted": old.id}] and result["SpaceReclaimed"] > 0
    assert [i.id for i in store.images()] == [new.id]
    assert store.rootfs_layers("app:1")


async def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageNotFound, match=r"^No such image: busybox:latest$"):
        store.get("busybox")
    with pytest.raises(ImageNotFound, match="No such image: busybox:latest"):
        await store.ensure("busybox", pull="never")
    with pytest.raises(ImageNotFound):
        await store.remove("nope:1")


async def test_blob_with_wrong_digest_is_rejected(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch, match=f"expected {wrong}"):
        store.blobs.put_bytes(b"hello", wrong)
    assert not store.blobs.has(wrong) and os.listdir(store.blobs.tmp_dir) == []


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read() if member.isreg() else b""  # type: ignore[union-attr]
            data = replace.get(member.name, data)
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))
    return dst


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-a-tar-of-images", "bad-config",
                                    "tampered-oci-layer", "bad-layer"])
async def test_corrupt_archives_fail_clearly_and_leave_nothing(tmp_path: Path, damage: str) -> None:
    image = build_busybox_image()
    good = write_docker_save(image, tmp_path / "good.tar", ["busybox:latest"])
    bad = tmp_path / "bad.tar"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"this is not a tar archive at all" * 100)
    elif damage == "not-a-tar-of-images":
        with tarfile.open(bad, "w") as tf:
            tf.addfile(tarfile.TarInfo("hello.txt"), io.BytesIO(b""))
    elif damage == "bad-config":
        _rewrite(good, bad, {image.config_digest[7:] + ".json": b"{not json"})
    elif damage == "bad-layer":
        name = image.diff_ids[1][7:] + "/layer.tar"
        _rewrite(good, bad, {name: image.layer_tars[1][:-2048] + b"\0" * 1024})
    else:
        oci = write_oci_layout([image], tmp_path / "oci.tar", "busybox:latest")
        layer = image.layer_blobs[1]
        _rewrite(oci, bad, {"blobs/sha256/" + image.diff_ids[1][7:]: b"",
                            "blobs/sha256/" + __import__("hashlib").sha256(layer).hexdigest():
                            layer[:-10] + b"0123456789"})
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageError) as err:
        await store.load(bad)
    assert err.value.message and "\n" not in err.value.message
    if damage != "bad-layer":
        assert isinstance(err.value, ArchiveError) and "invalid archive" in err.value.message
    assert store.images() == [] and _leftovers(store) == ([], [], [])
    with pytest.raises(ImageNotFound):
        store.get("busybox")
