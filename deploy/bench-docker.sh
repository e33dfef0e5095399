#!/usr/bin/env bash
# Install Debian's docker.io (dockerd + containerd) for bench/swarm_bench.py, as root. Safe to run twice.
# The benchmark starts its own dockerd (own data root, exec root, unix socket, no iptables, no bridge)
# and stops it by PID, so the packaged system services must never run: package scripts are forbidden
# to start daemons while installing (policy-rc.d exiting 101), and the units are left disabled.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

if installed docker.io && [ -x /usr/sbin/dockerd ]; then
    echo "bench-docker: docker.io already installed" >&2
else
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
    trap cleanup EXIT
    apt-get update -q
    apt-get install -y -q --no-install-recommends docker.io
fi

# Whatever the package scripts did, leave no packaged docker/containerd running or enabled (by unit
# name only). `systemctl disable` edits the unit links even when systemd is not PID 1 here.
units="docker.socket docker.service containerd.service"
if command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        # shellcheck disable=SC2086
        systemctl disable --now $units >/dev/null 2>&1 || true
    else
        # shellcheck disable=SC2086
        systemctl disable $units >/dev/null 2>&1 || true
    fi
fi
if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d docker disable >/dev/null 2>&1 || true
fi
/usr/sbin/dockerd --version
