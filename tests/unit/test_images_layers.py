"""Layer unpacking: overlayfs whiteouts, ownership, modes, links, and path-escape rejection."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.images import TarBuilder, build_busybox_image, gzip_bytes, sha256
from worker.images.errors import DigestMismatch, LayerError
from worker.images.layers import LayerStore, chain_ids, unpack_layer


def _install_busybox(tmp_path: Path) -> tuple[LayerStore, list[Path]]:
    image = build_busybox_image()
    store = LayerStore(tmp_path / "layers")
    chains = chain_ids(image.diff_ids)
    for blob, diff_id, chain in zip(image.layer_blobs, image.diff_ids, chains, strict=True):
        path = tmp_path / f"blob-{chain[7:15]}"
        path.write_bytes(blob)
        store.install(chain, path, diff_id)
    return store, [store.diff_path(c) for c in chains]


def test_layers_unpack_with_whiteouts_links_modes_and_owners(tmp_path: Path) -> None:
    _, (base, app) = _install_busybox(tmp_path)
    assert (base / "bin/busybox").stat().st_mode & 0o777 == 0o755
    assert os.readlink(base / "bin/sh") == "busybox"
    assert (base / "tmp").stat().st_mode & 0o7777 == 0o1777
    home = (base / "home/app").stat()
    assert (home.st_uid, home.st_gid, home.st_mode & 0o777) == (1000, 1000, 0o750)
    whiteout = os.lstat(app / "etc/removed.txt")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert os.getxattr(app / "opaque", "trusted.overlay.opaque") == b"y"
    assert not (app / "opaque/.wh..wh..opq").exists()
    a, b = os.stat(app / "data/file.txt"), os.stat(app / "data/hardlink.txt")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (a.st_uid, a.st_gid, a.st_mode & 0o777) == (1000, 1000, 0o640)
    assert os.stat(app / "data/setuid").st_mode & 0o7777 == 0o4755
    assert os.readlink(app / "usr/bin/abs-link") == "/bin/busybox"
    assert os.lstat(app / "etc/platform").st_mtime == 1_700_000_000


def test_overlay_of_the_layers_shows_the_merged_image(tmp_path: Path) -> None:
    _, (base, app) = _install_busybox(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={app}:{base}", str(mnt)],
                   check=True)
    try:
        assert not (mnt / "etc/removed.txt").exists()
        assert sorted(os.listdir(mnt / "opaque")) == ["new.txt"]
        assert (mnt / "etc/platform").read_text() == "linux/amd64\n"
        out = subprocess.run([str(mnt / "bin/busybox"), "echo", "ok"], capture_output=True, check=True)
        assert out.stdout == b"ok\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _layer(tmp_path: Path, build: TarBuilder, gz: bool = False) -> Path:
    data = build.finish()
    path = tmp_path / "layer.tar"
    path.write_bytes(gzip_bytes(data) if gz else data)
    return path


@pytest.mark.parametrize("case", ["dotdot", "symlink-parent", "hardlink-escape", "abs-symlink-parent"])
def test_path_escapes_are_rejected(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    t = TarBuilder()
    if case == "dotdot":
        t.file("a/../../outside/pwned", b"x")
    elif case == "symlink-parent":
        t.symlink("link", "../outside")
        t.file("link/pwned", b"x")
    elif case == "abs-symlink-parent":
        t.symlink("etc", str(outside))
        t.file("etc/pwned", b"x")
    else:
        t.hardlink("h", "../outside/target")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(LayerError, match=r"escapes the layer root|passes through a symlink"):
        unpack_layer(_layer(tmp_path, t), dest)
    assert os.listdir(outside) == []


def test_absolute_entry_names_stay_inside(tmp_path: Path) -> None:
    t = TarBuilder()
    t.file("/etc/abs.txt", b"inside")
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_layer(_layer(tmp_path, t, gz=True), dest)
    assert (dest / "etc/abs.txt").read_bytes() == b"inside"


def test_wrong_diff_id_is_rejected_and_leaves_no_layer(tmp_path: Path) -> None:
    t = TarBuilder()
    t.file("f", b"data")
    layer = _layer(tmp_path, t)
    store = LayerStore(tmp_path / "layers")
    wrong = sha256(b"something else")
    with pytest.raises(DigestMismatch, match="layer diff ID"):
        store.install(wrong, layer, wrong)
    assert not store.has(wrong)
    assert os.listdir(store.root) == []


def test_corrupt_gzip_layer_is_a_clear_error(tmp_path: Path) -> None:
    t = TarBuilder()
    t.file("f", b"x" * 100_000)
    blob = gzip_bytes(t.finish())
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(blob[: len(blob) // 2])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(LayerError, match="corrupt layer"):
        unpack_layer(path, dest)
