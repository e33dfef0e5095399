"""A container's root filesystem: an overlayfs of the read-only image layers and its own upper dir.

Theory of operation: the image layers are shared lower dirs (never written); each container owns
`upper/` and `work/` under its directory, so every write is copy-on-write and disappears with the
container. Mounting is idempotent (an existing mount at the target is kept) and so is
unmounting. `mounts_under` reads /proc/self/mountinfo, which is how cleanup finds overlay mounts
a crash left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MNT_DETACH = 2
MAX_OVERLAY_OPTIONS = 4000   # the kernel reads mount data from a single page


class RootfsError(OSError):
    pass


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f if line.strip()]


def is_mounted(path: Path) -> bool:
    return str(path) in mount_points()


def mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    return [p for p in mount_points() if p.startswith(prefix)]


def mount(source: str, target: Path, fstype: str, flags: int = 0, data: str = "") -> None:
    rc = _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags,
                     data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise RootfsError(err, f"mount {fstype} on {target} ({data[:200]}): {os.strerror(err)}")


def unmount(target: Path, *, lazy_fallback: bool = True) -> None:
    """Unmount every mount stacked on `target`; absent or not mounted is fine."""
    while is_mounted(target):
        if _libc.umount2(str(target).encode(), 0) == 0:
            continue
        err = ctypes.get_errno()
        if err == errno.EBUSY and lazy_fallback:
            if _libc.umount2(str(target).encode(), MNT_DETACH) == 0:
                continue
            err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise RootfsError(err, f"umount {target}: {os.strerror(err)}")


def mount_overlay(lower_dirs: list[Path], upper: Path, work: Path, target: Path) -> None:
    """Mount the overlay at `target` unless something is mounted there already."""
    if not lower_dirs:
        raise RootfsError(errno.EINVAL, "an overlay needs at least one lower dir")
    for d in lower_dirs:
        if not d.is_dir():
            raise RootfsError(errno.ENOENT, f"image layer directory {d} does not exist")
    for d in (upper, work):
        d.mkdir(parents=True, exist_ok=True)
    try:
        target.mkdir(parents=True)
    except FileExistsError:      # only a target that existed can have something mounted on it
        if is_mounted(target):
            return
    for d in lower_dirs:
        if ":" in str(d) or "," in str(d):
            raise RootfsError(errno.EINVAL, f"layer path {d} contains ':' or ','")
    data = f"lowerdir={':'.join(str(d) for d in lower_dirs)},upperdir={upper},workdir={work}"
    if len(data) > MAX_OVERLAY_OPTIONS:
        raise RootfsError(errno.E2BIG,
                          f"overlay options for {len(lower_dirs)} layers exceed one page")
    mount("overlay", target, "overlay", 0, data)


def unmount_below(root: Path) -> None:
    """Unmount everything at or below `root`, deepest first (lazily where busy); best effort."""
    points = [p for p in mount_points() if p == str(root).rstrip("/")] + mounts_under(root)
    for point in sorted(set(points), key=len, reverse=True):
        with contextlib.suppress(OSError):
            unmount(Path(point))
