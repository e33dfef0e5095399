"""mesh_bench's CPU layouts: which CPU each host's receive work, nginx and wrk get, and which
layouts judge the goals, for 2 CPUs and for 3+ (pure; the runs themselves are the slow smoke
test's)."""

from __future__ import annotations

from bench.mesh_bench import cpu_layouts

HOSTS = ("mesh-host", "server-host", "client-host")
LAN = ["lan-client", "lan-routed"]


def test_with_two_cpus_the_mesh_is_judged_with_its_host_alone_and_the_ends_sharing_a_cpu() -> None:
    layouts = cpu_layouts(2, *HOSTS, LAN)
    assert set(layouts) == {"hosts_on_own_cpus", "mesh_host_on_own_cpu", "switch_on_own_cpu"}
    assert {n for n, lay in layouts.items() if lay.judged} == {"hosts_on_own_cpus", "mesh_host_on_own_cpu"}
    two = layouts["hosts_on_own_cpus"]
    assert "vip" in two.paths and "mesh" not in two.paths
    assert two.receive == {"server-host": 1, "client-host": 0, "lan-client": 0, "lan-routed": 0}
    assert (two.server_cpu, two.client_cpu, two.switch_cpu) == (1, 0, None)
    alone = layouts["mesh_host_on_own_cpu"]
    assert alone.receive == {"mesh-host": 0, "server-host": 1, "lan-client": 1, "lan-routed": 1}
    assert (alone.server_cpu, alone.client_cpu, alone.switch_cpu) == (1, 1, None)
    switched = layouts["switch_on_own_cpu"]
    assert switched.receive == alone.receive and switched.switch_cpu == 0 and not switched.judged


def test_with_three_cpus_each_host_of_the_mesh_has_its_own_and_that_layout_is_judged() -> None:
    layouts = cpu_layouts(3, *HOSTS, LAN)
    assert {n for n, lay in layouts.items() if lay.judged} == {"hosts_on_own_cpus", "three_hosts_on_own_cpus"}
    three = layouts["three_hosts_on_own_cpus"]
    assert set(three.paths) == {"mesh", "straight", "routed_via_mesh_host"}
    assert three.receive == {"mesh-host": 2, "server-host": 1, "lan-client": 0, "lan-routed": 0}
    assert (three.server_cpu, three.client_cpu, three.switch_cpu) == (1, 0, None)
    assert not layouts["mesh_host_on_own_cpu"].judged
