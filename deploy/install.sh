#!/usr/bin/env bash
# Install everything shoal needs on a Debian 12 host, as root. Safe to run twice.
#   - system packages: the OCI runtime and shim, nftables, iproute2, the test image's busybox,
#     a real OCI registry for pull tests, headless chromium and its driver for the dashboard test,
#     and the docker CLI when none is on PATH;
#   - a virtualenv at <repo>/.venv with shoal (editable) and its dev tools;
#   - /usr/local/bin/shoal pointing into that virtualenv.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive

packages=(python3 python3-venv python3-dev gcc runc conmon nftables iproute2 busybox-static
          docker-registry conntrack kmod procps psmisc util-linux ca-certificates
          chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v docker >/dev/null 2>&1; then
    missing+=(docker-cli)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install: apt packages: ${missing[*]}" >&2
    apt-get update -q
    # Never let package scripts start daemons here (docker-registry, docker.io): tests start
    # their own, on loopback, and stop them by PID.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    if printf '%s\n' "${missing[@]}" | grep -qx docker-cli; then
        # Debian 12 ships the docker client inside docker.io.
        missing=("${missing[@]/docker-cli/docker.io}")
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The registry package enables a system service; shoal's tests run their own instances.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

py=${SHOAL_PYTHON:-python3}
if [ ! -x "$repo/.venv/bin/python" ]; then
    "$py" -m venv "$repo/.venv"
fi
"$repo/.venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
"$repo/.venv/bin/pip" install -q -e "$repo[dev]"
ln -sf "$repo/.venv/bin/shoal" /usr/local/bin/shoal
echo "install: shoal $("$repo/.venv/bin/shoal" --version 2>/dev/null || echo '?') in $repo/.venv" >&2
