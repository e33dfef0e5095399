"""Network namespaces by path, for one thread at a time.

A namespace here is a file that an nsfs bind mount keeps alive, under a directory the caller
owns (a daemon's run_dir), never /var/run/netns: several daemons share this machine, each in a
namespace of its own, and their names must not meet. The directory is made a shared mount
of itself first, as iproute2 does with /run/netns, so that an unmount here also leaves the
mount namespaces that copied it and the namespace is freed.

setns(2) and unshare(CLONE_NEWNET) change the calling *thread* only. `entered(path)` switches
the calling thread into a namespace and always switches it back; sockets opened meanwhile
(netlink ones included) stay in the namespace they were opened in, and processes forked
meanwhile start in it. Callers run these from one dedicated thread, never the event loop's.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2

THREAD_NETNS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str, path: str | os.PathLike[str] = "") -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path) if path else None)


def setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def _mount(source: str | None, target: str, flags: int) -> int:
    return int(_libc.mount(source.encode() if source else None, target.encode(), None, flags, None))


def open_netns(path: str | os.PathLike[str]) -> int:
    """An fd for a namespace (or for the calling thread's own with THREAD_NETNS)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def is_bound(path: Path) -> bool:
    """Whether `path` is an nsfs mount (a live namespace), not a bare placeholder file."""
    try:
        return path.stat().st_dev != path.parent.stat().st_dev
    except FileNotFoundError:
        return False


def prepare_dir(directory: Path) -> None:
    """Create `directory` and make it a shared mount of itself (once; idempotent)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = str(directory)
    if _mount(None, target, MS_SHARED | MS_REC) == 0:   # EINVAL unless already a mount point
        return
    _check(_mount(target, target, MS_BIND | MS_REC), "bind mount", directory)
    _check(_mount(None, target, MS_SHARED | MS_REC), "make shared", directory)


@contextlib.contextmanager
def entered(path: str | os.PathLike[str]) -> Iterator[None]:
    """Run the body with the calling thread in namespace `path`, then switch it back."""
    home = open_netns(THREAD_NETNS)
    try:
        target = open_netns(path)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def create(path: Path) -> None:
    """A new, empty network namespace kept alive by a bind mount on `path` (which must not be
    bound yet). The calling thread is back in its own namespace on return."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
    os.close(fd)
    home = open_netns(THREAD_NETNS)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare", path)
        try:
            _check(_mount(THREAD_NETNS, str(path), MS_BIND), "bind netns", path)
        finally:
            setns(home)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    finally:
        os.close(home)


def bind(source: str | os.PathLike[str], path: Path) -> None:
    """Keep an existing namespace (`source`, e.g. a process's /proc/PID/ns/net) reachable at
    `path` by a bind mount, as `create` does for a new one. Idempotent."""
    prepare_dir(path.parent)
    if is_bound(path):
        return
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
    os.close(fd)
    _check(_mount(str(source), str(path), MS_BIND), "bind netns", path)


def remove(path: Path) -> None:
    """Unmount and delete a namespace file; the namespace dies with its last user. Idempotent."""
    result = _libc.umount2(str(path).encode(), MNT_DETACH)
    if result != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(result, "unmount netns", path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def write_sysctl(name: str, value: str) -> bool:
    """Write a net sysctl of the calling thread's namespace (e.g. "ipv4/ip_forward").
    False if the knob does not exist (IPv6 compiled out)."""
    try:
        with open(f"/proc/sys/net/{name}", "w") as f:
            f.write(value)
    except FileNotFoundError:
        return False
    return True
