#!/usr/bin/env bash
# Install what the side-by-side benchmarks compare against, as root. Safe to run twice.
#   - etcd-server (Debian) for bench/raft_bench.py: the benchmark starts its own 3-member etcd
#     cluster on loopback and stops it by PID, so the packaged system service must never run.
#   - iperf3 (Debian) for bench/overlay_bench.py: the benchmark runs its own iperf3 servers and
#     clients inside the lab's network namespaces and stops them by PID, so the packaged iperf3
#     service must never run either.
#   - wrk and nginx-light (Debian) for bench/mesh_bench.py: the benchmark runs the host's nginx
#     inside the lab tasks' network namespaces, each with its own config, pid and log files under a
#     temporary directory, and stops it by PID; wrk is its load generator. The packaged nginx
#     service must never run (and its default site is never used).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

wanted=()
if command -v etcd >/dev/null 2>&1 && installed etcd-server; then
    echo "bench-setup: etcd already installed: $(etcd --version | head -1)" >&2
else
    wanted+=(etcd-server etcd-client)
fi
if command -v iperf3 >/dev/null 2>&1 && installed iperf3; then
    echo "bench-setup: iperf3 already installed: $(iperf3 --version | head -1)" >&2
else
    wanted+=(iperf3)
fi
if command -v wrk >/dev/null 2>&1 && installed wrk; then
    echo "bench-setup: wrk already installed" >&2
else
    wanted+=(wrk)
fi
if command -v nginx >/dev/null 2>&1 && installed nginx-light; then
    echo "bench-setup: nginx already installed: $(nginx -v 2>&1)" >&2
else
    wanted+=(nginx-light)
fi

if [ "${#wanted[@]}" -gt 0 ]; then
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Forbid package scripts from starting daemons while we install.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
    trap cleanup EXIT
    # iperf3's package asks (debconf) whether to run a system-wide server: no.
    echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${wanted[@]}"
fi

# Whatever the init system did, leave no packaged etcd, iperf3 or nginx running or enabled (by
# service name only).
for service in etcd iperf3 nginx; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now "$service.service" >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        service "$service" stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
done
etcd --version | head -1
iperf3 --version | head -1
wrk -v 2>&1 | head -1 || true
nginx -v 2>&1
