"""Watching a map of the data plane from outside (bench/mesh_bench.py's RUNNING -> in rotation):
`nft monitor` in a namespace, and at each new ruleset generation the backends in rotation in one
map listed, each address stamped with the time it was first seen. Watches for a host's ingress
namespace (the routing mesh's port map) and a task's own VIP table (a VIP's map)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bench.support import wrk
from bench.support.netlab import overlay_address
from bench.support.netperf import BenchError, in_ns
from cli.lab import Lab
from ingress.dataplane.plan import port_map, table_names, vip_map

IN_ROTATION_MAX = 2**31                                  # slot keys from here are draining backends


def ingress_address(task: dict[str, Any]) -> str:
    for attachment in task.get("NetworksAttachments") or []:
        if attachment["Network"].get("Spec", {}).get("Ingress"):
            return str(attachment["Addresses"][0]).split("/")[0]
    raise BenchError(f"task {task['ID']} has no address on the ingress network")


def ingress_sandbox(lab: Lab, host: str) -> str:
    return str(Path(lab.node(host).data_dir) / "network" / "netns" / "s-ingress-sbox")


class MapWatch:
    """`nft monitor` in one network namespace; at each new generation there, the backends in
    rotation in one map (slot key < 2^31 : element) are listed, and each address first seen is
    stamped with the generation's arrival time (time.time(): the clock of the tasks' timestamps).
    `element_address` reads a backend's address from an element's value (as `nft -j` gives it);
    `task_address` is the address a task has in this map (which network's)."""

    def __init__(self, name: str, netns: str, table: str, map_name: str, element_address: Callable[[Any], str],
                 task_address: Callable[[dict[str, Any]], str]) -> None:
        self.name, self.netns, self.table, self.map = name, netns, table, map_name
        self.element_address, self.task_address = element_address, task_address
        self.first_seen: dict[str, float] = {}
        self.generations = 0
        self.changed = threading.Condition()
        self.proc = wrk.spawn([*in_ns(netns), "nft", "monitor"], stderr=subprocess.DEVNULL)
        self.thread = threading.Thread(target=self._follow, name=f"watch-{name}", daemon=True)
        self.thread.start()

    def listing(self) -> set[str]:
        proc = subprocess.run([*in_ns(self.netns), "nft", "-j", "list", "map", "ip", self.table, self.map],
                              capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            return set()            # not there yet
        out: set[str] = set()
        for item in json.loads(proc.stdout)["nftables"]:
            for key, value in (item.get("map") or {}).get("elem") or []:
                if int(key) < IN_ROTATION_MAX:
                    out.add(self.element_address(value))
        return out

    def holds(self, task: dict[str, Any]) -> bool:
        return self.task_address(task) in self.listing()

    def record(self, stamp: float) -> None:
        seen = self.listing()
        with self.changed:
            for address in seen - set(self.first_seen):
                self.first_seen[address] = stamp
            self.changed.notify_all()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("# new generation"):
                stamp = time.time()
                self.generations += 1
                self.record(stamp)

    def wait_for(self, known: set[str], deadline: float) -> str | None:
        """An address in rotation here that is not in `known`, once there is one."""
        with self.changed:
            while True:
                new = set(self.first_seen) - known
                if new:
                    return min(new, key=lambda a: self.first_seen[a])
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)


def mesh_watch(lab: Lab, host: str, port: int) -> MapWatch:
    """Host `host`'s ingress namespace, the routing mesh's backends of tcp `port` (address . port)."""
    return MapWatch(host, ingress_sandbox(lab, host), table_names()["mesh"], port_map(("tcp", port)),
                    lambda value: str(value["concat"][0]), ingress_address)


def vip_watch(namespace: str, vip: str, net: str) -> MapWatch:
    """A task's own VIP table (in its namespace `namespace`), the backends of `vip` on `net` (addresses)."""
    return MapWatch("vip_table", namespace, table_names()["vip"], vip_map(IPv4Address(vip)), str,
                    lambda task: overlay_address(task, net))
