#!/usr/bin/env bash
# Install what the side-by-side benchmarks compare against, as root. Safe to run twice.
#   - etcd-server (Debian) for bench/raft_bench.py: the benchmark starts its own 3-member etcd
#     cluster on loopback and stops it by PID, so the packaged system service must never run.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if command -v etcd >/dev/null 2>&1 && dpkg-query -W -f='${Status}' etcd-server 2>/dev/null \
        | grep -q "install ok installed"; then
    echo "bench-setup: etcd already installed: $(etcd --version | head -1)" >&2
else
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Forbid package scripts from starting daemons while we install.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
    trap cleanup EXIT
    apt-get update -q
    apt-get install -y -q --no-install-recommends etcd-server etcd-client
fi

# Whatever the init system did, leave no packaged etcd running or enabled (by service name only).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    service etcd stop >/dev/null 2>&1 || true
fi
if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d etcd disable >/dev/null 2>&1 || true
fi
etcd --version | head -1
