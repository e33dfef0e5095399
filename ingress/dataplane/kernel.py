"""The kernel side: nft, ip and conntrack run inside a given network namespace, and sysctls.

Everything acts on the namespace of an fd the daemon holds (as the embedded DNS does,
ingress/dns/nat.py), so on the namespace that fd was opened on even if its path has been
reused since; with no fd, on the daemon's own namespace. nft scripts and listings go through
libnftables (ingress/nftables.py) in a throwaway thread that joined the namespace
(ingress/dns/netns.py), as sysctls do: no process. A fork of the daemon with two execs
(`nsenter … nft`) cost several milliseconds of CPU per transaction, and every new service, task
and port change on a node runs a few, alongside the task starts they come with. `ip` and
`conntrack` still run as `nsenter --net=/proc/self/fd/N -- tool ...`; `conntrack -D` only in a
namespace whose entries (listed from /proc in its thread, when few) include one it would delete.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
from collections.abc import Callable, Sequence
from typing import TypeVar

from ingress.dataplane import ctlist, iplines
from ingress.dns.netns import run_in_netns
from ingress.nftables import NftError, run_script

T = TypeVar("T")

TOOL_TIMEOUT = 60.0          # a full rewrite of thousands of services takes a fraction of that


class DataPlaneError(Exception):
    pass


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


async def run(netns_fd: int | None, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
    """(returncode, stdout, stderr) of `argv` run in the namespace open at `netns_fd`."""
    cmd = [_tool(argv[0]), *argv[1:]]
    fds: tuple[int, ...] = ()
    if netns_fd is not None:
        cmd = [_tool("nsenter"), f"--net=/proc/self/fd/{netns_fd}", "--", *cmd]
        fds = (netns_fd,)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, pass_fds=fds)
    try:
        async with asyncio.timeout(TOOL_TIMEOUT):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def _in(netns_fd: int | None, fn: Callable[[], T]) -> T:
    """`fn` on a thread in the namespace open at `netns_fd` (the daemon's own with None)."""
    if netns_fd is None:
        return await asyncio.to_thread(fn)
    return await run_in_netns(netns_fd, fn)


async def nft_apply(netns_fd: int | None, script: str) -> None:
    """One atomic transaction: all of `script` or nothing."""
    if not script:
        return
    try:
        await _in(netns_fd, functools.partial(run_script, script))
    except NftError as exc:
        raise DataPlaneError(f"nft: {exc}") from None


async def nft_list(netns_fd: int | None, table: str) -> str | None:
    """What `nft -j list table ip <table>` prints; None if there is no such table."""
    try:
        return await _in(netns_fd, functools.partial(run_script, f"list table ip {table}", json=True))
    except NftError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise DataPlaneError(f"nft list table {table}: {exc}") from None


async def ip_json(netns_fd: int | None, *args: str) -> str:
    rc, out, err = await run(netns_fd, ["ip", "-j", *args])
    if rc != 0:
        raise DataPlaneError(f"ip {' '.join(args)}: {err.strip()}")
    return out


async def ip_batch(netns_fd: int | None, lines: Sequence[str]) -> None:
    """Every line is tried (-force); any failure is raised afterwards. The forms the plans write
    go through netlink in-process (iplines.py); a batch with any other goes to `ip`."""
    if not lines:
        return
    try:
        for line in lines:
            iplines.parse(line)
    except iplines.Unsupported:
        rc, out, err = await run(netns_fd, ["ip", "-force", "-batch", "-"], "".join(line + "\n" for line in lines))
        if rc != 0:
            raise DataPlaneError(f"ip: {(err or out).strip()}") from None
        return
    failures = await _in(netns_fd, functools.partial(iplines.run_lines, list(lines)))
    if failures:
        raise DataPlaneError(f"ip: {'; '.join(failures)}")


LISTED_AT_MOST = 2000       # entries read to spare a `conntrack -D`; a larger table goes to the tool


def _conntrack_listing() -> str | None:
    """This thread's namespace's conntrack entries, when there are few and the kernel lists them."""
    try:
        with open("/proc/thread-self/net/stat/nf_conntrack") as f:
            f.readline()
            entries = int(f.readline().split()[0], 16)
        if entries > LISTED_AT_MOST:
            return None
        with open("/proc/thread-self/net/nf_conntrack") as f:
            return f.read()
    except (OSError, ValueError, IndexError):
        return None


async def conntrack_delete_each(netns_fd: int | None,
                                filters: Sequence[Sequence[str]]) -> tuple[int, list[DataPlaneError]]:
    """Delete the conntrack entries matching each filter: how many went, and the failures (every
    filter is tried). The namespace's listing is read once; a filter it shows no entry for is
    left without running the tool."""
    listing = await _in(netns_fd, _conntrack_listing) if filters else None
    count, failed = 0, []
    for args in filters:
        if listing is not None and ctlist.any_match(listing, args) is False:
            continue
        try:
            count += await _conntrack_tool(netns_fd, args)
        except DataPlaneError as exc:
            failed.append(exc)
    return count, failed


async def conntrack_delete(netns_fd: int | None, args: Sequence[str]) -> int:
    """One filter of `conntrack_delete_each`; its failure is raised."""
    count, failed = await conntrack_delete_each(netns_fd, [args])
    if failed:
        raise failed[0]
    return count


async def _conntrack_tool(netns_fd: int | None, args: Sequence[str]) -> int:
    rc, out, err = await run(netns_fd, ["conntrack", "-D", *args])
    text = err + out
    count = 0
    for line in text.splitlines():
        if "flow entries have been deleted" in line:
            try:
                count = int(line.split(":")[-1].split()[0])
            except (ValueError, IndexError):
                count = 0
    nothing_matched = count == 0 and "flow entries have been deleted" in text   # exit status 1
    if rc != 0 and not nothing_matched:
        raise DataPlaneError(f"conntrack -D {' '.join(args)}: {text.strip()}")
    return count


def _write_sysctls(pairs: Sequence[tuple[str, str]]) -> None:
    for key, value in pairs:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)


async def write_sysctls(netns_fd: int | None, pairs: Sequence[tuple[str, str]]) -> None:
    if not pairs:
        return
    try:
        if netns_fd is None:
            await asyncio.to_thread(_write_sysctls, pairs)
        else:
            await run_in_netns(netns_fd, lambda: _write_sysctls(pairs))
    except OSError as exc:
        raise DataPlaneError(f"sysctl: {exc}") from exc


def identity(netns_fd: int | None) -> tuple[int, int]:
    """What tells one namespace from another (a path may be reused by a new one)."""
    st = os.fstat(netns_fd) if netns_fd is not None else os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino
