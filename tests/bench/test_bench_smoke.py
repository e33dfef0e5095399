"""Smoke tests of the benchmarks: each bench script runs end to end at tiny sizes and prints JSON
of the documented shape. They check that the scripts keep working, never how fast anything is
(benchmarks are not timed assertions). The benches that bring up a lab (failover, overlay, mesh:
about 1.5 minutes together) run with `--slow`, to keep the default suite near 15 minutes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.mesh_bench import cpu_layouts

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def is_seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and value >= 0


def needs_root_runc() -> None:
    if os.geteuid() != 0 or not shutil.which("runc") or not shutil.which("conmon"):
        pytest.skip("needs root, runc and conmon")


def test_scale_bench_json() -> None:
    doc = run_bench("scale_bench.py", "--nodes", "20", "--tasks", "300", "--replicas", "100",
                    "--profile", "--profile-top", "5", "--timeout", "60")
    assert doc["bench"] == "scale" and "error" not in doc, doc.get("error")
    assert (doc["nodes"], doc["tasks"], doc["services"]) == (20, 300, 3)
    for key in ("assigned_s", "running_s", "sessions_open_s"):
        assert is_seconds(doc[key]), key
    assert doc["placement_rate_tasks_per_s"] > 0 and doc["running_rate_tasks_per_s"] > 0
    assert is_seconds(doc["assigned_cpu_s"]) and doc["placement_rate_per_cpu_s"] > 0
    assert doc["nodes_marked_down"] == 0 and doc["session_restarts"] == 0
    assert is_seconds(doc["loop_stall_max_s"]) and doc["tasks_made"] == 300
    assert doc["memory_kib"]["after"]["VmHWM"] >= doc["memory_kib"]["before_tasks"]["VmRSS"] > 0
    assert isinstance(doc["meets_target"], bool)
    assert len(doc["profile"]["by_cumtime"]) == 5


def test_scale_bench_rejects_bad_sizes() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "scale_bench.py"), "--nodes", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--nodes must be >= 1" in proc.stderr


def test_runtime_bench_json() -> None:
    needs_root_runc()
    doc = run_bench("runtime_bench.py", "--iterations", "1", "--burst", "2", "--burst-rounds", "2")
    assert doc["bench"] == "runtime" and "error" not in doc, doc.get("error")
    for case in ("one_container", "burst_2"):
        for system in ("shoal", "runc"):
            stats = doc[case][system]
            assert is_seconds(stats["p50_ms"]) and stats["p99_ms"] >= stats["p50_ms"], (case, system)
        assert set(doc[case]["shoal_split"]) == {"assigned_to_ready", "ready_to_running"}
        assert set(doc["ratio_shoal_over_runc"][case]) == {"p50_ms", "p99_ms"}
    burst = doc["burst_2"]
    assert burst["rounds"] == 2 and burst["shoal"]["n"] == 2 * 2 and burst["runc"]["all_running_ms"] > 0
    assert isinstance(doc["meets_target"], bool)


def check_swarm_runs(system: dict[str, Any], sizes: list[int]) -> None:
    assert "error" not in system, system.get("error")
    for n in sizes:
        run = system["runs"][str(n)]
        assert "error" not in run, run["error"]
        assert (run["replicas"], run["scaled_to"]) == (n, 3 * n)
        for phase in ("create_s", "scale_s", "update_s", "update_completed_s", "remove_s"):
            assert is_seconds(run[phase]), phase


def test_swarm_bench_shoal_json() -> None:
    needs_root_runc()
    doc = run_bench("swarm_bench.py", "--systems", "shoal", "--sizes", "1", "--workers", "0",
                    "--update-monitor", "0", "--phase-timeout", "60")
    assert doc["bench"] == "swarm" and doc["workload"]["sizes"] == [1]
    assert doc["shoal"]["hosts"] == 1 and is_seconds(doc["shoal"]["lab_up_s"])
    check_swarm_runs(doc["shoal"], [1])
    assert "docker" not in doc and "ratio_shoal_over_docker" not in doc


@pytest.mark.slow
def test_swarm_bench_side_by_side_json() -> None:
    """Both systems (Docker only where deploy/bench-docker.sh installed it), with the ratios."""
    needs_root_runc()
    doc = run_bench("swarm_bench.py", "--sizes", "2", "--workers", "1", "--update-monitor", "0",
                    "--phase-timeout", "120", timeout=300)
    check_swarm_runs(doc["shoal"], [2])
    if not Path("/usr/sbin/dockerd").exists():
        assert "deploy/bench-docker.sh" in doc["docker"]["error"]
        return
    check_swarm_runs(doc["docker"], [2])
    assert doc["docker"]["engine"]["runtime_path"] == "/usr/sbin/runc"
    assert set(doc["ratio_shoal_over_docker"]["2"]) == {"create", "scale", "update", "update_completed", "remove"}
    assert isinstance(doc["meets_target"], bool)


@pytest.mark.slow
def test_failover_bench_json() -> None:
    needs_root_runc()
    doc = run_bench("failover_bench.py", "--trials", "1", "--replicas", "2", timeout=180)
    assert doc["bench"] == "failover" and doc["settings"]["defaults"] is True
    seconds = doc["seconds_to_tasks_running_elsewhere"]
    assert len(seconds["all"]) == 1 and is_seconds(seconds["p99"])
    assert isinstance(doc["meets_target"], bool)


@pytest.mark.slow
def test_overlay_bench_json() -> None:
    """Every part at its smallest (iperf3 only where deploy/bench-setup.sh installed it)."""
    needs_root_runc()
    doc = run_bench("overlay_bench.py", "--reps", "1", "--seconds", "1", "--rr-count", "20", "--tasks", "1",
                    timeout=180)
    assert doc["bench"] == "overlay"
    if not shutil.which("iperf3"):
        assert "deploy/bench-setup.sh" in doc["error"]
        return
    assert "error" not in doc, doc["error"]
    throughput, rtt, start = doc["throughput"], doc["round_trip"], doc["assignment_to_running"]
    assert "error" not in throughput and "error" not in start, (throughput.get("error"), start.get("error"))
    for path in ("underlay", "overlay"):
        assert throughput[path]["median_gbit_s"] > 0 and len(throughput[path]["runs"]) == 1
        assert rtt[path]["n"] == 20 and rtt[path]["p99_us"] >= rtt[path]["median_us"] > 0
    assert doc["lab"]["overlay"]["mtu"] == 1450 and throughput["ratio_overlay_over_underlay"] > 0
    if (os.cpu_count() or 1) >= 2:                      # each lab host on its own CPU
        split = doc["throughput_hosts_on_own_cpus"]
        assert "error" not in split, split.get("error")
        assert split["overlay"]["median_gbit_s"] > 0 and "CPU 1" in split["method"]
    for kind in ("without_network", "with_network"):
        assert start[kind]["n"] == 1 and is_seconds(start[kind]["median_ms"])
    assert set(start["first_task_ms"]) == {"without_network", "with_network_first_on_node"}
    assert start["log_running_timestamps_equal_api"] is True
    assert isinstance(doc["meets_goals"], bool)


@pytest.mark.slow
def test_mesh_bench_json() -> None:
    """Every part at its smallest (requests/s only where deploy/bench-setup.sh installed wrk and nginx);
    about a minute and a half (four layouts where there are 2+ CPUs)."""
    needs_root_runc()
    doc = run_bench("mesh_bench.py", "--reps", "1", "--seconds", "1", "--tasks", "2", "--services", "10",
                    "--connects", "50", timeout=240)
    assert doc["bench"] == "mesh" and "error" not in doc, doc.get("error")
    first = doc["first_packet"]
    assert "error" not in first, first["error"]
    table = first["task_table"]          # the path a task's connections take; the LB's at the top level
    for part, targets in ((first, ("one_vip", "many_vips", "straight_to_backend")), (table, ("one_vip", "many_vips"))):
        for target in targets:
            assert part[target]["n"] == 50 and part[target]["p99_us"] >= part[target]["median_us"] > 0, target
        assert set(part["ratio_many_over_one"]) == {"median", "p90", "p99"}
    assert first["services"] == 10 and set(table["added_median_us"]) == {"one", "many"}
    assert table["program_nft_commands_many"] > 0 and set(table["program_s"]) == {"one", "many"}
    assert isinstance(first["meets_goal"], bool) and isinstance(first["meets_goal_lb"], bool)
    assert "namespaces_left_behind" not in first
    rotation = doc["running_to_rotation"]
    assert "error" not in rotation, rotation["error"]
    assert rotation["n"] == 2 and rotation["max_ms"] >= rotation["p99_ms"] >= rotation["p50_ms"]
    assert len(doc["lab"]["hosts"]) == 3 and set(rotation["per_host_median_ms"]) == set(doc["lab"]["hosts"])
    assert isinstance(rotation["vip_table_median_ms"], (int, float)) and "shoal-vip" in rotation["method"]
    for sample in rotation["samples"]:     # the last of every watch: each host's ingress and mbcli's VIP table
        assert sample["every_node_ms"] == max(*sample["per_host_ms"].values(), sample["vip_table_ms"]), sample
    rps = doc["requests_per_s"]
    if not (shutil.which("wrk") and shutil.which("nginx")):
        assert "deploy/bench-setup.sh" in rps["error"]
        return
    assert "error" not in rps, rps["error"]
    unsplit = ("mesh", "straight", "routed_via_mesh_host", "mesh_via_task_host", "straight_from_host", "vip",
               "straight_from_task")
    layouts: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {"unsplit": (rps, unsplit)}
    if (os.cpu_count() or 1) >= 2:
        split = cpu_layouts(os.cpu_count() or 1, "m", "s", "c", [])
        layouts.update({name: (rps[name], lay.paths) for name, lay in split.items()})
        assert rps["meets_goal"] == all(rps[name]["meets_goal"] for name, lay in split.items() if lay.judged), \
            rps["judged_on"]
    for layout, (part_of, paths) in layouts.items():
        assert "error" not in part_of, (layout, part_of["error"])
        for mode in ("keepalive", "new_connection"):
            for path in paths:
                part = part_of[mode][path]
                assert part["median_requests_s"] > 0 and len(part["runs"]) == 1, (layout, mode, path)
                assert part["max_failed_fraction"] == 0, (layout, mode, path, part["runs"])
                ipis = part["median_ipis_per_request"]
                assert len(ipis) == (os.cpu_count() or 1) and min(ipis) >= 0, (layout, mode, path, ipis)
            assert part_of[mode]["ratio"], (layout, mode)
            assert isinstance(part_of[mode]["meets_goal"], bool)
    assert set(rps["keepalive"]["ratio"]) == {
        "mesh_over_straight", "vip_over_straight", "mesh_over_routed_via_mesh_host",
        "routed_via_mesh_host_over_straight", "mesh_via_task_host_over_straight", "mesh_over_straight_from_host"}
    assert isinstance(doc["meets_goals"], bool)
