"""Benchmark: the routing mesh and the VIP load balancers against going straight to a task, how
soon a new task is in every node's rotation, and what 1,000 services cost a VIP's first packet
(issue 12).

Prints one JSON document. Three parts:

  - requests/s (wrk, Debian's, against the host's nginx; both installed by deploy/bench-setup.sh):
    a lab (cli.lab.Lab, named `mb<pid>`) of manager-1, worker-1 and worker-2; an overlay network,
    a service `mbweb` of 2 sleeping busybox tasks pinned to worker-1, on that network and
    publishing tcp 8080 -> 80 through the routing mesh, and a one-task client service `mbcli` on
    the network, pinned to worker-2. In each mbweb task's network namespace (`nsenter
    --net=<data dir>/network/netns/s-<task id>`, the namespace its container runs in) the host's
    nginx answers on port 80 (its own config, pid and log files under a temp dir; stopped by
    PID). A client on the lab's LAN: a namespace of the bench's own (`<lab>-lanclient`, deleted
    by name) wired to the lab's hub bridge at 198.18.0.200, with a /32 route to each mbweb task's
    gateway-bridge address through worker-1 (as a LAN router would route to a host's containers).
    Paths, each measured by wrk from the namespace named:
      (a) `mesh`: from the LAN client to manager-1's address, port 8080 (manager-1 runs none of
          the tasks: its daemon namespace DNATs to its ingress namespace, which DNATs over the
          ingress overlay to a task on worker-1; replies come back the same way);
      (c) `straight`: from the LAN client straight to the tasks' gateway-bridge addresses, port 80,
          through worker-1 (routed, no NAT): the same client, one crossing of the lab's wire (the
          reference for (a));
      `mesh_via_task_host` (no goal): from the LAN client through worker-1's own published port:
          the mesh's NAT with one crossing of the wire;
      `straight_from_host` (no goal; the reference of (a) until 2026-12-07): from worker-1's host
          namespace to the tasks' gateway-bridge addresses, no wire at all;
      (b) `vip`: from the mbcli task's namespace to mbweb's VIP on the overlay (DNATed in the
          mbcli task's own namespace, table shoal-vip, straight to a task on worker-1; worker-2's
          LB namespace is not on the path);
      (c) `straight_from_task`: from the mbcli task's namespace to the tasks' overlay addresses;
      `routed_via_mesh_host` (no goal): from a second LAN client (`<lab>-lanrouted`) to the tasks'
          gateway-bridge addresses with plain IP routing through manager-1 both ways (routes the
          bench adds; manager-1's ICMP redirects off): the mesh's three hosts without the mesh.
    Each run is 2 wrk processes at once (one thread each, half the connections each), requests/s
    summed: on the straight paths one per task, on the others both to the one address; so every
    path has as many server workers and client threads at work (the scheduler shares a busy
    machine per thread: one task against two would be measured short). Keep-alive and a new
    connection per request (`-H 'Connection: close'`), `--seconds` per run, `--reps` runs per
    path and mode, paths alternated (order reversed every rep); the median of each path counts.
    Goals: (a) and (b) >= 0.9x their reference with keep-alive, >= 0.8x with a new connection
    per request. Reported, never asserted.
    With 2+ CPUs, more layouts of the same lab (`cpu_layouts`), each host's receive work steered
    to a CPU chosen for it (RPS on its wire: a veth otherwise delivers in the sender's softirq, so
    one CPU would run several hosts' network stacks), nginx (one worker per task) and wrk pinned:
      `hosts_on_own_cpus`: the two-host paths (straight, mesh_via_task_host, vip,
          straight_from_task), the server's host and nginx on CPU 1, the client's side and wrk on
          CPU 0: as on two machines; the VIP is judged here;
      `mesh_host_on_own_cpu`: mesh, straight and routed_via_mesh_host, manager-1 alone on CPU 0,
          everything else on CPU 1: the mesh host's forwarding is charged to neither end, as on a
          third machine, but the two ends share a CPU; the mesh is judged here with 2 CPUs;
      `switch_on_own_cpu` (reported, not judged): as the last, with the lab's hub (the LAN's
          switch) also on CPU 0, so that every frame between two hosts crosses CPUs as frames
          cross machines. In the last layout `straight` has none: its client and server share a
          CPU and hand frames over in one softirq, while the mesh's frames cross to CPU 0 and back;
      `three_hosts_on_own_cpus` (3+ CPUs; the mesh is judged here then): the mesh's paths with
          manager-1 alone on CPU 2, worker-1 and nginx on CPU 1, the LAN clients and wrk on CPU 0.
    Each run also counts the inter-processor interrupts each CPU took per request
    (`ipis_per_request`, /proc/interrupts): what a path paid for crossing CPUs, which on this VM
    is a VM exit on the sender and an interrupt on the receiver.
  - task RUNNING -> in rotation on every node: a one-task service `mbrot` publishing tcp 8090
    and on the overlay (so it has a VIP there; no placement constraint), scaled up by one
    `--tasks` times, each step waiting for the last. `nft monitor` runs (bench/support/mapwatch.py) in each
    host's ingress namespace (`s-ingress-sbox`), watching the map of port 8090's backends
    (`pb-tcp-8090` in table `shoal-mesh`, a task's ingress address), and in the mbcli task's own
    namespace, watching the map of mbrot's VIP (`vb-<VIP as 8 hex digits>` in table `shoal-vip`,
    the task's overlay address: the path mbcli's connections to the VIP take). At each new
    ruleset generation in a namespace its map is listed, and an address first seen in rotation
    (slot key < 2^31) is stamped with that generation's arrival time. A new task is in rotation
    on every node once every watched map holds it (each at its own address, matched to the
    task by its NetworksAttachments). The latency of a task is from its RUNNING timestamp (the
    worker's report, as the store holds it: `GET /tasks`, read after the step, so the bench
    does not poll the manager meanwhile) to the last watched map's stamp; all hosts share this
    machine's clock. p50/p99/max, per host and the VIP table's apart; goal p99 <= 200 ms.
  - first packet to a VIP with `--services` services defined vs 1 (bench/support/vipconnect.py:
    namespaces of its own; client namespaces holding the task table (IngressDataPlane.set_vips),
    and LB namespaces (set_lb) reached from a client without one; connect() times interleaved);
    goal: median and p99 within 10%, judged on the task table (`meets_goal_lb`: the LB's).

Only addresses of the lab's own namespaces (and of the bench's own namespaces) are targeted.
Every process the bench starts is stopped by PID, its namespaces are deleted and the lab torn
down at the end, on failure, Ctrl-C and SIGTERM too.
Usage: python bench/mesh_bench.py [--reps 5] [--seconds 3] [--tasks 20] [--services 1000]
                                  [--connects 2000] [--connections 32] [--threads 1] [--timeout 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.support import netlab, vipconnect, wrk
from bench.support.mapwatch import mesh_watch, vip_watch
from bench.support.netlab import (
    POLL_S,
    call,
    overlay_address,
    run_bench,
    running_tasks,
    sandbox_path,
    uninterrupted,
    up_lab,
)
from bench.support.netperf import REALTIME_PRIORITY, BenchError, quantile
from cli.lab import Lab
from cli.lab import net as labnet
from ingress.dataplane.plan import port_map, table_names, vip_map
from model import parse_time

MANAGER, SERVERS, CLIENT = "manager-1", "worker-1", "worker-2"
WEB_PORT, TARGET_PORT, ROT_PORT = 8080, 80, 8090
GOALS = {"keepalive": 0.9, "new_connection": 0.8}       # path / straight, at least
ROTATION_GOAL_MS = 200.0                                 # p99, at most
FIRST_PACKET_GOAL = 1.1                                  # many / one, at most
LAN_CLIENT_ADDRESS, LAN_CLIENT_PORT = "198.18.0.200", "plan"   # on the lab's /24, its hub port
# The LAN client's source address towards the tasks' host. Connections to two mesh entry points
# from one client address reach a task with the same 4-tuple (no SNAT) but with TCP timestamps of
# two different bases (Linux draws a timestamp offset per source/destination pair), and a SYN on
# a tuple the task still holds in TIME_WAIT with an older-looking timestamp is dropped (PAWS):
# the path run second would lose its new connections for a minute. A second address avoids it.
LAN_CLIENT_SECOND = "198.18.0.201"
# A second LAN client whose routes to the tasks' gateway-bridge addresses go through the mesh's
# host (plain IP forwarding there, no NAT, no overlay): the same three hosts as the mesh's path
# without the mesh, the reference that shows what the mesh itself costs.
LAN_ROUTED_ADDRESS, LAN_ROUTED_PORT = "198.18.0.202", "planrouted"
SERVER_CPU, CLIENT_CPU, MESH_HOST_CPU = 1, 0, 0             # the split runs: nginx, wrk, manager-1
# (ratio, path, reference): the judged ones, then the ones that explain them
RATIOS = (("mesh_over_straight", "mesh", "straight"), ("vip_over_straight", "vip", "straight_from_task"),
          ("mesh_over_routed_via_mesh_host", "mesh", "routed_via_mesh_host"),
          ("routed_via_mesh_host_over_straight", "routed_via_mesh_host", "straight"),
          ("mesh_via_task_host_over_straight", "mesh_via_task_host", "straight"),
          ("mesh_over_straight_from_host", "mesh", "straight_from_host"))
JUDGED = ("mesh_over_straight", "vip_over_straight")


# -- the lab ---------------------------------------------------------------------------------------

def service_spec(name: str, replicas: int, *, host: str = "", networks: tuple[str, ...] = (),
                 ports: tuple[tuple[int, int], ...] = ()) -> dict[str, Any]:
    return netlab.service_spec(name, "mesh", replicas, host=host, networks=networks, ports=ports)


def gateway_address(lab: Lab, host: str, task: dict[str, Any]) -> str:
    record = Path(lab.node(host).data_dir) / "network" / "sandboxes" / f"{task['ID']}.json"
    try:
        return str(json.loads(record.read_text())["gateway"]).split("/")[0]
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise BenchError(f"task {task['ID']}: no gateway address in {record}: {e}") from None


def lan_client_ns(lab: Lab) -> str:
    return f"{lab.name}-lanclient"


def lan_routed_ns(lab: Lab) -> str:
    return f"{lab.name}-lanrouted"


def add_lan_client(lab: Lab, via: str, routes: list[str]) -> str:
    """A namespace on the lab's LAN (its hub bridge) with a /32 route to each of `routes` through
    the host at `via`, and its second address as the source towards `via` itself; its path."""
    ns = lan_client_ns(lab)
    labnet.delete_namespace(ns)
    labnet.create_host(lab.hub_ns, ns, LAN_CLIENT_PORT, LAN_CLIENT_ADDRESS, 24)
    labnet.sh("ip", "-n", ns, "addr", "add", f"{LAN_CLIENT_SECOND}/24", "dev", "eth0")
    labnet.sh("ip", "-n", ns, "route", "add", f"{via}/32", "dev", "eth0", "src", LAN_CLIENT_SECOND)
    for address in routes:
        labnet.sh("ip", "-n", ns, "route", "add", f"{address}/32", "via", via, "src", LAN_CLIENT_ADDRESS)
    return f"/run/netns/{ns}"


def add_routed_client(lab: Lab, router: str, target: str, routes: list[str]) -> str:
    """A LAN client whose packets to each of `routes` (addresses behind host `target`) go through
    host `router` both ways: routes there and back, and no ICMP redirect from `router` (which
    would send the client straight to `target`, as the hosts share the LAN); its path."""
    ns, router_ns, target_ns = lan_routed_ns(lab), lab.node(router).ns, lab.node(target).ns
    labnet.delete_namespace(ns)
    labnet.create_host(lab.hub_ns, ns, LAN_ROUTED_PORT, LAN_ROUTED_ADDRESS, 24)
    labnet.sh("ip", "netns", "exec", router_ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.send_redirects=0",
              "net.ipv4.conf.eth0.send_redirects=0")
    for address in routes:
        labnet.sh("ip", "-n", ns, "route", "add", f"{address}/32", "via", lab.node(router).address)
        labnet.sh("ip", "-n", router_ns, "route", "add", f"{address}/32", "via", lab.node(target).address)
    labnet.sh("ip", "-n", target_ns, "route", "add", f"{LAN_ROUTED_ADDRESS}/32", "via", lab.node(router).address)
    return f"/run/netns/{ns}"


# -- requests/s ------------------------------------------------------------------------------------

def requests_per_s(lab: Lab, web: list[dict[str, Any]], client: dict[str, Any], net: str, vip: str,
                   args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    host_ns = f"/run/netns/{lab.node(SERVERS).ns}"
    client_ns = sandbox_path(lab, CLIENT, client)
    gateways = [gateway_address(lab, SERVERS, t) for t in web]
    lan_ns = add_lan_client(lab, lab.node(SERVERS).address, gateways)
    routed_ns = add_routed_client(lab, MANAGER, SERVERS, gateways)
    web_url = [f"http://{g}:{TARGET_PORT}/" for g in gateways]
    overlay_url = [f"http://{overlay_address(t, net)}:{TARGET_PORT}/" for t in web]
    # name -> (client namespace, the URL of each wrk process: one per task, at once; the straight
    # paths send each to its own task, so every path has as many server workers and client
    # threads at work)
    n = len(web)
    paths: dict[str, tuple[str, list[str]]] = {
        "mesh": (lan_ns, [f"http://{lab.node(MANAGER).address}:{WEB_PORT}/"] * n),
        "straight": (lan_ns, web_url),
        "routed_via_mesh_host": (routed_ns, web_url),
        "mesh_via_task_host": (lan_ns, [f"http://{lab.node(SERVERS).address}:{WEB_PORT}/"] * n),
        "straight_from_host": (host_ns, web_url),
        "vip": (client_ns, [f"http://{vip}:{TARGET_PORT}/"] * n),
        "straight_from_task": (client_ns, overlay_url),
    }
    out = measure(lab, web, paths, args, workdir, None)
    out["paths"] = {
        "mesh": f"LAN client {LAN_CLIENT_ADDRESS} -> {MANAGER} (runs no task) {lab.node(MANAGER).address}:{WEB_PORT}",
        "straight": f"LAN client {LAN_CLIENT_ADDRESS} -> each task's gateway-bridge address, port {TARGET_PORT}, "
                    f"routed through {SERVERS} (one wrk each; the reference of mesh)",
        "routed_via_mesh_host": f"LAN client {LAN_ROUTED_ADDRESS} -> each task's gateway-bridge address, port "
                                f"{TARGET_PORT}, routed through {MANAGER} then {SERVERS} both ways (the mesh's three "
                                "hosts without the mesh; no goal)",
        "mesh_via_task_host": f"LAN client (from {LAN_CLIENT_SECOND}) -> {SERVERS} (runs the tasks) "
                              f"{lab.node(SERVERS).address}:{WEB_PORT} (no goal)",
        "straight_from_host": f"{SERVERS} host namespace -> each task's gateway-bridge address, port "
                              f"{TARGET_PORT}, no wire (one wrk each; no goal: the reference of mesh until 2026-12-07)",
        "vip": f"task of mbcli on {CLIENT} -> VIP {vip}:{TARGET_PORT} on the overlay",
        "straight_from_task": f"task of mbcli on {CLIENT} -> each task's overlay address, port {TARGET_PORT} "
                              "(one wrk each)",
    }
    cpus = os.cpu_count() or 1
    if cpus < 2:
        return out
    lan = [lan_client_ns(lab), lan_routed_ns(lab)]
    layouts = cpu_layouts(cpus, lab.node(MANAGER).ns, lab.node(SERVERS).ns, lab.node(CLIENT).ns, lan)
    for name, layout in layouts.items():
        try:
            with netlab.receive_on_cpus(layout.receive,
                                        (lab.hub_ns, layout.switch_cpu) if layout.switch_cpu is not None else None):
                out[name] = measure(lab, web, {p: paths[p] for p in layout.paths}, args, workdir,
                                    (layout.server_cpu, layout.client_cpu))
            out[name]["layout"] = layout.text
        except (BenchError, subprocess.SubprocessError) as e:
            out[name] = {"error": str(e)}
    # Judged as on separate machines: the VIP (two hosts) as on two, the mesh (three) with its host
    # on a CPU of its own; the unsplit figures stay in `keepalive` / `new_connection`.
    judged = [name for name, layout in layouts.items() if layout.judged]
    if all("meets_goal" in out[name] for name in judged):
        out["meets_goal_unsplit"] = out["meets_goal"]
        out["meets_goal"] = all(out[name]["meets_goal"] for name in judged)
        out["judged_on"] = ", ".join(f"{'vip' if 'vip' in layouts[n].paths else 'mesh'} in {n}" for n in judged)
    return out


@dataclass(frozen=True)
class CpuLayout:
    paths: tuple[str, ...]
    receive: dict[str, int]         # namespace -> the CPU its wire's receive work is steered to
    switch_cpu: int | None          # the CPU the lab's hub switches on (None: each sender's)
    server_cpu: int                 # nginx's
    client_cpu: int                 # wrk's
    judged: bool
    text: str


def cpu_layouts(cpus: int, mesh_host: str, server_host: str, client_host: str, lan: list[str]) -> dict[str, CpuLayout]:
    """Where each host's receive work runs (RPS on its wire), for a machine with `cpus` CPUs (2+),
    as on separate machines: the two-host paths with the client's host on one CPU and the
    server's on another; the mesh's paths with the mesh host on a CPU that neither end uses,
    which with 2 CPUs means the ends share the other one. Then `straight`'s client and server
    hand frames over within one softirq, with no interrupt, while the mesh's frames cross to the
    mesh host's CPU and back: with 3+ CPUs each of the three hosts gets a CPU of its own and that
    layout is the mesh's judged one. Reported, not judged: the mesh's paths with the lab's hub
    (the LAN's switch) on the mesh host's CPU as well, so that every frame between hosts crosses
    CPUs (`median_ipis_per_request` shows what each path paid)."""
    server, client, mesh = SERVER_CPU, CLIENT_CPU, MESH_HOST_CPU
    mesh_paths = ("mesh", "straight", "routed_via_mesh_host")
    shared = {mesh_host: mesh, **dict.fromkeys([server_host, *lan], server)}
    layouts = {
        "hosts_on_own_cpus": CpuLayout(
            ("straight", "mesh_via_task_host", "vip", "straight_from_task"),
            {server_host: server, client_host: client, **dict.fromkeys(lan, client)}, None, server, client, True,
            f"nginx on CPU {server} with {SERVERS}'s receive work, wrk on CPU {client} with that of {CLIENT} and the "
            "LAN clients"),
        "mesh_host_on_own_cpu": CpuLayout(
            mesh_paths, shared, None, server, server, cpus < 3,
            f"{MANAGER}'s receive work alone on CPU {mesh}; nginx, wrk and the receive work of {SERVERS} and the LAN "
            f"clients on CPU {server}"),
        "switch_on_own_cpu": CpuLayout(
            mesh_paths, shared, mesh, server, server, False,
            f"as mesh_host_on_own_cpu, and the lab's hub (the LAN switch) on CPU {mesh} with {MANAGER}: every frame "
            "between hosts crosses CPUs"),
    }
    if cpus >= 3:
        third = 2
        layouts["three_hosts_on_own_cpus"] = CpuLayout(
            mesh_paths, {mesh_host: third, server_host: server, **dict.fromkeys(lan, client)}, None, server, client,
            True, f"{MANAGER}'s receive work alone on CPU {third}, nginx on CPU {server} with {SERVERS}'s, wrk on CPU "
            f"{client} with the LAN clients'")
    return layouts


def measure(lab: Lab, web: list[dict[str, Any]], paths: dict[str, tuple[str, list[str]]],
            args: argparse.Namespace, workdir: Path, cpus: tuple[int, int] | None) -> dict[str, Any]:
    """nginx in each web task, wrk from each path's namespace, keep-alive and a new connection per
    request; with `cpus` = (server, client), nginx (one worker per task) runs on the server CPU
    and wrk on the client CPU."""
    server_cpu, client_cpu = cpus if cpus else (None, None)
    workers = 1 if cpus else os.cpu_count() or 1
    n = len(web)
    servers = []
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {p: [] for p in paths} for m in GOALS}
    try:
        for task in web:
            servers.append(wrk.start_nginx(sandbox_path(lab, SERVERS, task), workdir / task["ID"], TARGET_PORT,
                                           workers, realtime=args.realtime, cpu=server_cpu))
        for ns, urls in paths.values():
            for url in set(urls):
                wrk.wait_answers(ns, url, args.timeout)
        order = list(paths)
        for rep in range(args.reps):
            for mode in GOALS:
                for name in (order if rep % 2 == 0 else order[::-1]):
                    ns, urls = paths[name]
                    ipis = netlab.ipis_taken()
                    r = wrk.run_wrks(ns, urls, args.seconds, threads=args.threads,
                                     connections=max(args.threads, args.connections // n),
                                     close=mode == "new_connection", timeout=args.timeout, realtime=args.realtime,
                                     cpu=client_cpu)
                    taken = [b - a for a, b in zip(ipis, netlab.ipis_taken(), strict=True)]
                    runs[mode][name].append({"requests_s": r["requests_s"], "failed_fraction": r["failed_fraction"],
                                             "latency_ms": r["latency"],
                                             "ipis_per_request": [round(t / max(1, r["requests"]), 3) for t in taken]})
    finally:
        for server in servers:
            wrk.stop(server)
    out: dict[str, Any] = {
        "method": f"{n} wrk processes at once per run (one per task; -t{args.threads} "
                  f"-c{max(args.threads, args.connections // n)} each, requests/s summed), {args.seconds} s "
                  f"per run, {args.reps} runs per path and mode, paths alternated (order reversed every rep); median "
                  f"requests/s. nginx ({workers} worker processes, reuseport) in each of {n} tasks on {SERVERS}",
    }
    met = True
    for mode, goal in GOALS.items():
        part: dict[str, Any] = {}
        for name, rs in runs[mode].items():
            part[name] = {"median_requests_s": round(statistics.median(r["requests_s"] for r in rs), 1),
                          "max_failed_fraction": max(r["failed_fraction"] for r in rs),
                          "median_ipis_per_request": [round(statistics.median(cpu), 3) for cpu in
                                                      zip(*(r["ipis_per_request"] for r in rs), strict=True)],
                          "runs": rs}
        rate = {name: p["median_requests_s"] for name, p in part.items()}
        ratios = {key: (path, ref) for key, path, ref in RATIOS if path in rate and ref in rate}
        part["ratio"] = {key: round(rate[path] / rate[ref], 3) for key, (path, ref) in ratios.items()}
        # the same, rep by rep (a path and its reference ran a few seconds apart): less swayed by
        # load that came and went between reps
        per_rep = {key: [round(a["requests_s"] / b["requests_s"], 3)
                         for a, b in zip(runs[mode][path], runs[mode][ref], strict=True)]
                   for key, (path, ref) in ratios.items() if key in JUDGED}
        part["ratio_per_rep"] = per_rep
        part["ratio_median_of_reps"] = {k: round(statistics.median(v), 3) for k, v in per_rep.items()}
        judged = [part["ratio"][key] for key in JUDGED if key in part["ratio"]]
        part["goal"] = f">= {goal}x straight"
        part["meets_goal"] = bool(judged) and all(v >= goal for v in judged)
        met = met and part["meets_goal"]
        out[mode] = part
    out["meets_goal"] = met
    return out


# -- task RUNNING -> in rotation on every node -----------------------------------------------------

def rotation_latency(lab: Lab, net: str, client: dict[str, Any], count: int, timeout: float) -> dict[str, Any]:
    manager = lab.node(MANAGER).host
    asyncio.run(call(manager, "POST", "/services/create",
                     service_spec("mbrot", 1, networks=(net,), ports=((ROT_PORT, TARGET_PORT),))))
    first = asyncio.run(running_tasks(manager, "mbrot", 1, timeout))[0]
    endpoint = asyncio.run(call(manager, "GET", "/services/mbrot"))["Endpoint"]
    vip = next((str(v["Addr"]).split("/")[0] for v in endpoint.get("VirtualIPs") or [] if v["NetworkID"] == net), None)
    if vip is None:
        raise BenchError(f"service mbrot has no VIP on network {net}: {endpoint.get('VirtualIPs')}")
    hosts = [mesh_watch(lab, h, ROT_PORT) for h in lab.nodes]
    table = vip_watch(sandbox_path(lab, CLIENT, client), vip, net)
    watches = [*hosts, table]
    time.sleep(0.3)                 # the monitors subscribe
    deadline = time.monotonic() + timeout
    while not all(w.holds(first) for w in watches):
        if time.monotonic() > deadline:
            raise BenchError(f"the first mbrot task never entered rotation on every host and in the mbcli task's "
                             f"VIP table in {timeout:.0f}s")
        time.sleep(POLL_S)
    for w in watches:
        w.record(time.time())       # the baseline: what is in rotation before the first step
    samples: list[dict[str, Any]] = []
    nodes = {n["ID"]: n["Description"]["Hostname"] for n in asyncio.run(call(manager, "GET", "/nodes"))}
    for step in range(count):
        known = {w.name: set(w.first_seen) for w in watches}
        service = asyncio.run(call(manager, "GET", "/services/mbrot"))
        spec = service["Spec"]
        spec["Mode"]["Replicated"]["Replicas"] = step + 2
        asyncio.run(call(manager, "POST", f"/services/{service['ID']}/update", spec,
                         version=service["Version"]["Index"]))
        deadline = time.monotonic() + timeout
        # each watch sees the new task at its own address (ingress, or on the overlay): the task
        # is the running one that has each of them
        found = {w.name: w.wait_for(known[w.name], deadline) for w in watches}
        if None in found.values():
            raise BenchError(f"step {step + 1}: new task in rotation per watch: {found} after {timeout:.0f}s")
        task = next((t for t in asyncio.run(running_tasks(manager, "mbrot", step + 2, timeout))
                     if all(w.task_address(t) == found[w.name] for w in watches)), None)
        if task is None:
            raise BenchError(f"step {step + 1}: no running task has the addresses now in rotation: {found}")
        running = parse_time(task["Status"]["Timestamp"])
        ms = {w.name: round((w.first_seen[w.task_address(task)] - running) * 1000, 1) for w in watches}
        per_host = {w.name: ms[w.name] for w in hosts}
        # the task's last write in the store (the manager's clock, this machine's): its RUNNING
        # status, unless something wrote the task again since (then it is later than the rotation)
        written = round((parse_time(task["UpdatedAt"]) - running) * 1000, 1) if task.get("UpdatedAt") else None
        samples.append({"task": task["ID"][:12], "node": nodes.get(task["NodeID"], "?"),
                        "every_node_ms": max(ms.values()), "first_node_ms": min(ms.values()),
                        "store_write_ms": written, "per_host_ms": per_host, "vip_table_ms": ms[table.name]})
    for w in watches:
        wrk.stop(w.proc)
    values = [s["every_node_ms"] for s in samples]
    return {
        "method": f"service mbrot (published tcp {ROT_PORT}, on the overlay with mbcli: VIP {vip}) scaled up by one "
                  f"{count} times; per new task: its RUNNING timestamp (GET /tasks) to the arrival of the `nft "
                  "monitor` generation after which the last of the watched maps held it in rotation: each host's "
                  f"ingress namespace, map {table_names()['mesh']} {port_map(('tcp', ROT_PORT))} (its ingress "
                  f"address), and the mbcli task's own namespace on {CLIENT}, map {table_names()['vip']} "
                  f"{vip_map(IPv4Address(vip))} (its overlay address); with few tasks, p99 is about the max",
        "n": len(values),
        "p50_ms": round(quantile(values, 0.5), 1), "p99_ms": round(quantile(values, 0.99), 1),
        "max_ms": round(max(values), 1), "min_ms": round(min(values), 1),
        "per_host_median_ms": {h: round(statistics.median(s["per_host_ms"][h] for s in samples), 1)
                               for h in lab.nodes},
        "vip_table_median_ms": round(statistics.median(s["vip_table_ms"] for s in samples), 1),
        "vip_table_p99_ms": round(quantile([s["vip_table_ms"] for s in samples], 0.99), 1),
        "split_median_ms": split(samples),
        "samples": samples,
        "goal": f"p99 <= {ROTATION_GOAL_MS:.0f} ms",
        "meets_goal": quantile(values, 0.99) <= ROTATION_GOAL_MS,
    }


def split(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Where the time goes (medians): the RUNNING report on its way into the store (the agent's
    report batching, the RPC, the dispatcher's write), the store write to the first watched map
    holding the task (Raft commit, the views pushed, one node's data plane programmed: a host's
    ingress namespace or the mbcli task's VIP table), and the first watched map to the last."""
    usable = [s for s in samples if s["store_write_ms"] is not None and s["store_write_ms"] <= s["first_node_ms"]]
    out = {"first_to_last_node": round(statistics.median(s["every_node_ms"] - s["first_node_ms"] for s in samples), 1)}
    if usable:
        out["running_to_store_write"] = round(statistics.median(s["store_write_ms"] for s in usable), 1)
        out["store_write_to_first_node"] = round(statistics.median(s["first_node_ms"] - s["store_write_ms"]
                                                                   for s in usable), 1)
    return out


# -- the run ---------------------------------------------------------------------------------------

def lab_part(args: argparse.Namespace, result: dict[str, Any]) -> None:
    lab = Lab(f"mb{os.getpid() % 100000:05d}")
    try:
        result["lab"] = up_lab(lab, managers=1, workers=2)
        manager = lab.node(MANAGER).host

        async def setup() -> tuple[str, list[dict[str, Any]], dict[str, Any], str]:
            net = (await call(manager, "POST", "/networks/create", {"Name": "mbnet", "Driver": "overlay"}))["Id"]
            await call(manager, "POST", "/services/create",
                       service_spec("mbweb", 2, host=SERVERS, networks=(net,), ports=((WEB_PORT, TARGET_PORT),)))
            await call(manager, "POST", "/services/create", service_spec("mbcli", 1, host=CLIENT, networks=(net,)))
            web, client = await asyncio.gather(running_tasks(manager, "mbweb", 2, args.timeout),
                                               running_tasks(manager, "mbcli", 1, args.timeout))
            endpoint = (await call(manager, "GET", "/services/mbweb"))["Endpoint"]
            vip = next(str(v["Addr"]).split("/")[0] for v in endpoint["VirtualIPs"] if v["NetworkID"] == net)
            return net, web, client[0], vip

        net, web, client, vip = asyncio.run(setup())
        if not (shutil.which("wrk") and shutil.which("nginx")):
            result["requests_per_s"] = {"error": "wrk and nginx are not installed (run deploy/bench-setup.sh)"}
        else:
            try:
                with tempfile.TemporaryDirectory(prefix="mesh-bench-nginx-") as workdir:
                    result["requests_per_s"] = requests_per_s(lab, web, client, net, vip, args, Path(workdir))
            except BenchError as e:
                result["requests_per_s"] = {"error": str(e)}
        try:
            result["running_to_rotation"] = rotation_latency(lab, net, client, args.tasks, args.timeout)
        except BenchError as e:
            result["running_to_rotation"] = {"error": str(e)}
    finally:
        with uninterrupted():
            wrk.stop_all()
            labnet.delete_namespace(lan_client_ns(lab))
            labnet.delete_namespace(lan_routed_ns(lab))
            lab.down()


def bench(args: argparse.Namespace, result: dict[str, Any]) -> None:
    try:
        result["first_packet"] = asyncio.run(vipconnect.first_packet(args.services, args.connects, FIRST_PACKET_GOAL,
                                                                      args.timeout))
    except BenchError as e:
        result["first_packet"] = {"error": str(e)}
    finally:
        with uninterrupted():
            wrk.stop_all()
            vipconnect.cleanup_leftovers()
    lab_part(args, result)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--reps", type=int, default=5, help="wrk runs per path and mode")
    ap.add_argument("--seconds", type=int, default=3, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32, help="open connections of a run (over its wrk processes)")
    ap.add_argument("--threads", type=int, default=1, help="threads of each wrk process (one per task)")
    ap.add_argument("--tasks", type=int, default=20, help="scale-up steps timed into rotation")
    ap.add_argument("--services", type=int, default=1000, help="VIPs defined in the 'many' LB namespace")
    ap.add_argument("--connects", type=int, default=2000, help="measured connections per first-packet target")
    ap.add_argument("--timeout", type=float, default=60.0, help="bound on each wait, in seconds")
    ap.add_argument("--realtime", action="store_true",
                    help=f"run nginx and wrk at SCHED_FIFO {REALTIME_PRIORITY}, so that other load on the machine does "
                         "not decide the requests/s (they then take the CPUs for each run)")
    args = ap.parse_args(argv)
    for name, low, high in (("reps", 1, 20), ("seconds", 1, 60), ("connections", 1, 1000), ("threads", 1, 16),
                            ("tasks", 1, 100), ("services", 1, vipconnect.MAX_SERVICES),
                            ("connects", 10, 100_000)):
        if not low <= getattr(args, name) <= high:
            ap.error(f"--{name} must be in {low}..{high}")
    if args.connections < args.threads:
        ap.error("--connections must be at least --threads")
    if not 5 <= args.timeout <= 600:
        ap.error("--timeout must be in 5..600")
    return args


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], int]:
    args = parse_args(argv)
    result: dict[str, Any] = {
        "bench": "mesh",
        "settings": {k: getattr(args, k) for k in ("reps", "seconds", "connections", "threads", "tasks", "services",
                                                   "connects", "realtime")},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "loadavg_start": list(os.getloadavg())},
    }
    if os.geteuid() != 0 or not shutil.which("runc") or not shutil.which("nft"):
        result["error"] = "needs root, runc and nft"
        return result, 0
    if shutil.which("wrk"):
        result["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    if shutil.which("nginx"):
        result["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    status = run_bench(result, lambda: bench(args, result), ("requests_per_s", "running_to_rotation", "first_packet"))
    return result, status


if __name__ == "__main__":
    doc, code = main()
    print(json.dumps(doc, indent=2))
    sys.exit(code)
