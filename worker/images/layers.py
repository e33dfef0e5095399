"""Layers: a layer tar unpacked once into `layers/<chain-id-hex>/diff`, shared by every image
whose layer stack starts the same way.

Theory of operation: a layer's identity is its chain ID (the sha256 chain over the diff IDs of
it and every layer below it), so one directory serves as an overlayfs `lowerdir` for all
images sharing that stack prefix. Unpacking streams the (gzip/bzip2/xz or plain) tar once,
hashing the uncompressed bytes to verify the diff ID, and writes into a private temp directory
that is renamed into place only when complete: a crash or a bad layer never leaves a
half-unpacked layer visible. Image-format whiteouts become overlayfs whiteouts: `.wh.NAME` is a
0/0 character device NAME, and `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.

Safety: every entry path is normalised; `..` components, and paths that would pass through a
symlink created by the layer itself, are rejected, so absolute or relative symlinks in the
image can never redirect a write outside the layer directory. Hard links must point at an entry
already inside the layer.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import shutil
import stat
import tarfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from worker.images.errors import DigestMismatch, LayerError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
COPY_CHUNK = 1024 * 1024

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Chain ID per layer: the first is its diff ID, then sha256("<parent chain> <diff id>")."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


class _HashingReader:
    """A read-only file object that hashes everything read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass


def open_decompressed(path: Path) -> BinaryIO:
    """The uncompressed byte stream of a layer blob, whatever its compression."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_GZIP_MAGIC):
        return cast(BinaryIO, gzip.open(path, "rb"))
    if head.startswith(_ZSTD_MAGIC):
        try:
            import zstandard
        except ImportError:
            raise LayerError("zstd-compressed layers are not supported on this node "
                             "(the zstandard module is not installed)") from None
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
    if head.startswith(_BZIP2_MAGIC):
        return cast(BinaryIO, bz2.open(path, "rb"))
    if head.startswith(_XZ_MAGIC):
        return cast(BinaryIO, lzma.open(path, "rb"))
    return open(path, "rb")


@dataclass(frozen=True)
class LayerInfo:
    chain_id: str
    diff_id: str
    size: int          # bytes of regular-file content


def _entry_parts(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"layer entry {name!r} escapes the layer root (contains '..')")
    return parts


class _Unpacker:
    """Applies tar members to one fresh directory. Not thread-safe; one per layer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.size = 0
        self._dirs: list[tuple[Path, tarfile.TarInfo]] = []
        self._known_dirs: set[Path] = {root}

    def _parent(self, parts: list[str], name: str) -> Path:
        """The directory to hold `parts[-1]`, created as needed; never through a symlink."""
        current = self.root
        for part in parts[:-1]:
            current = current / part
            if current in self._known_dirs:
                continue
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                os.mkdir(current, 0o755)
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise LayerError(f"layer entry {name!r} passes through a symlink ({part!r})")
                if not stat.S_ISDIR(st.st_mode):
                    raise LayerError(f"layer entry {name!r}: {part!r} is not a directory")
            self._known_dirs.add(current)
        return current

    def _clear(self, path: Path, keep_dir: bool) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
            self._known_dirs = {d for d in self._known_dirs if not d.is_relative_to(path)}
        else:
            os.unlink(path)

    def apply(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _entry_parts(member.name)
        if not parts:
            return  # the layer root itself: keep the directory as created
        parent = self._parent(parts, member.name)
        base = parts[-1]
        if base == OPAQUE_MARKER:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk and friends): not part of the image
        if base.startswith(WHITEOUT_PREFIX):
            target = parent / base[len(WHITEOUT_PREFIX):]
            self._clear(target, keep_dir=False)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            self._owner_and_times(target, member, chmod=False)
            return
        path = parent / base
        self._clear(path, keep_dir=member.isdir())
        if member.isdir():
            if not path.exists():
                os.mkdir(path, 0o700)
            self._known_dirs.add(path)
            self._dirs.append((path, member))
            self._xattrs(path, member)
            return
        if member.isreg():
            src = tf.extractfile(member)
            if src is None:
                raise LayerError(f"layer entry {member.name!r}: no file data")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(COPY_CHUNK):
                    out.write(chunk)
            self.size += member.size
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            target_parts = _entry_parts(member.linkname)
            if not target_parts:
                raise LayerError(f"hard link {member.name!r} points at the layer root")
            target = self._parent(target_parts, member.linkname) / target_parts[-1]
            if not os.path.lexists(target):
                raise LayerError(f"hard link {member.name!r} -> {member.linkname!r}: target is not "
                                 "in this layer")
            os.link(target, path, follow_symlinks=False)
            return  # the link shares the target's inode and metadata
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            try:
                os.mknod(path, kind | (member.mode & 0o7777), os.makedev(member.devmajor, member.devminor))
            except PermissionError:
                return  # unprivileged: device nodes are skipped (runc provides /dev)
        elif member.isfifo():
            os.mkfifo(path, member.mode & 0o7777)
        else:
            raise LayerError(f"layer entry {member.name!r} has unsupported type {member.type!r}")
        self._xattrs(path, member)
        self._owner_and_times(path, member, chmod=not member.issym())

    def _owner_and_times(self, path: Path, member: tarfile.TarInfo, chmod: bool) -> None:
        os.lchown(path, member.uid, member.gid)
        if chmod:
            os.chmod(path, member.mode & 0o7777)  # after chown: chown clears setuid bits
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def _xattrs(self, path: Path, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key.removeprefix("SCHILY.xattr.")
            with contextlib.suppress(OSError):
                os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)

    def finish(self) -> None:
        """Directory modes, owners and times last: adding children changes a dir's mtime."""
        for path, member in reversed(self._dirs):
            self._owner_and_times(path, member, chmod=True)


def unpack_layer(blob: Path, dest: Path, expected_diff_id: str | None = None) -> tuple[str, int]:
    """Unpack layer blob `blob` into the empty directory `dest`; returns (diff_id, size).

    Raises `DigestMismatch` if the uncompressed tar does not hash to `expected_diff_id`, and
    `LayerError` for corrupt or unsafe tars. On error `dest` holds junk; the caller drops it.
    """
    unpacker = _Unpacker(dest)
    try:
        with open_decompressed(blob) as raw:
            reader = _HashingReader(raw)
            with tarfile.open(fileobj=reader, mode="r|", errorlevel=2) as tf:  # type: ignore[call-overload]
                for member in tf:
                    unpacker.apply(tf, member)
            reader.drain()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, OSError) as e:
        if isinstance(e, LayerError):
            raise
        raise LayerError(f"corrupt layer {blob.name[:12]}: {e}") from e
    unpacker.finish()
    diff_id = "sha256:" + reader.hash.hexdigest()
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise DigestMismatch("layer diff ID", expected_diff_id, diff_id)
    return diff_id, unpacker.size


class LayerStore:
    """`layers/<chain-hex>/{diff/,layer.json}`; a directory exists only once fully unpacked."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, chain_id: str) -> Path:
        return self.root / chain_id.removeprefix("sha256:")

    def diff_path(self, chain_id: str) -> Path:
        return self._dir(chain_id) / "diff"

    def has(self, chain_id: str) -> bool:
        return (self._dir(chain_id) / "layer.json").is_file()

    def info(self, chain_id: str) -> LayerInfo:
        meta = json.loads((self._dir(chain_id) / "layer.json").read_text())
        return LayerInfo(chain_id=meta["chain_id"], diff_id=meta["diff_id"], size=meta["size"])

    def install(self, chain_id: str, blob: Path, diff_id: str) -> LayerInfo:
        """Unpack `blob` as layer `chain_id` unless present. Blocking: run it in a thread."""
        if self.has(chain_id):
            return self.info(chain_id)
        staging = self.root / f".tmp-{uuid.uuid4().hex}"
        try:
            (staging / "diff").mkdir(parents=True)
            _, size = unpack_layer(blob, staging / "diff", diff_id)
            info = LayerInfo(chain_id=chain_id, diff_id=diff_id, size=size)
            (staging / "layer.json").write_text(json.dumps(info.__dict__))
            try:
                os.rename(staging, self._dir(chain_id))
            except OSError:
                if not self.has(chain_id):
                    raise
            return info
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def chain_ids(self) -> list[str]:
        return ["sha256:" + e.name for e in os.scandir(self.root)
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]

    def remove(self, chain_id: str) -> int:
        path = self._dir(chain_id)
        size = self.info(chain_id).size if self.has(chain_id) else 0
        # rename first so a half-deleted tree is never mistaken for a layer
        doomed = self.root / f".tmp-rm-{uuid.uuid4().hex}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return 0
        shutil.rmtree(doomed, ignore_errors=True)
        return size

    def clear_tmp(self) -> None:
        for entry in os.scandir(self.root):
            if entry.name.startswith(".tmp-"):
                shutil.rmtree(entry.path, ignore_errors=True)
