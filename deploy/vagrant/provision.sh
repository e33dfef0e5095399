#!/usr/bin/env bash
# Install shoal on one Debian 12 machine (a lab VM or a real one), as root, from a checkout
# already copied there (rsync; default /opt/shoal/src). Safe to run twice.
#
#   provision.sh install ADDRESS   apt packages (only those missing: the lab's box has them all),
#                                  a virtualenv at /opt/shoal/venv (offline from /opt/shoal/wheels
#                                  when the box baked them, else from PyPI), shoal itself,
#                                  /usr/local/bin/shoal, the systemd unit (deploy/shoal.service) with
#                                  /etc/default/shoal advertising ADDRESS:2377, and the busybox demo
#                                  image (shoal/demo:latest, built here from busybox-static).
#
# A changed checkout restarts the daemon: its containers live on (KillMode=process) and are
# re-adopted. Forming the swarm is form-swarm.sh's job (it runs on the machine that has ssh to all).
set -euo pipefail
src=${SHOAL_SRC:-/opt/shoal/src}
venv=/opt/shoal/venv
wheels=/opt/shoal/wheels
export DEBIAN_FRONTEND=noninteractive
log() { echo "provision[$(hostname)]: $*" >&2; }

install() {
    local address=$1
    local packages=(python3 python3-venv runc conmon nftables iproute2 busybox-static kmod rsync curl)
    local missing=() p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt packages: ${missing[*]}"
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi

    if [ ! -x "$venv/bin/python" ]; then
        log "virtualenv $venv"
        python3 -m venv "$venv"
    fi
    local deps
    deps=$(python3 - "$src/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(" ".join(tomllib.load(f)["project"]["dependencies"]))
PY
)
    local pip=("$venv/bin/pip" install -q --disable-pip-version-check)
    [ -d "$wheels" ] && pip+=(--no-index --find-links "$wheels")
    # The pinned dependencies, when the venv lacks any (the box has them: nothing happens then).
    # shellcheck disable=SC2086
    if ! "$venv/bin/python" - $deps <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
    then
        log "python dependencies"
        # shellcheck disable=SC2086
        "${pip[@]}" $deps
    fi

    # shoal itself: the checkout on the venv's path (like `pip install -e`; building a wheel in a
    # TCG guest takes minutes), and the command.
    log "shoal from $src"
    local site
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    if ls -d "$site"/shoal-*.dist-info >/dev/null 2>&1; then  # a copy pip installed would shadow it
        "$venv/bin/pip" uninstall -y -q shoal
    fi
    echo "$src" > "$site/shoal-src.pth"
    printf '#!/bin/sh\nexec %s/bin/python -m cli.main "$@"\n' "$venv" > /usr/local/bin/shoal
    chmod 755 /usr/local/bin/shoal
    local before after
    before=$(cat /opt/shoal/src.stamp 2>/dev/null || true)
    after=$(cd "$src" && find . -type f ! -path '*/__pycache__/*' -printf '%P %s %T@\n' | sort | sha256sum)
    echo "$after" > /opt/shoal/src.stamp

    local unit_changed=
    if ! cmp -s "$src/deploy/shoal.service" /etc/systemd/system/shoal.service; then
        install_file "$src/deploy/shoal.service" /etc/systemd/system/shoal.service
        unit_changed=1
    fi
    local env_file
    env_file=$(printf 'SHOAL_ADVERTISE_ADDR=%s:2377\nSHOAL_LISTEN_ADDR=0.0.0.0:2377\n' "$address")
    if [ "$(cat /etc/default/shoal 2>/dev/null)" != "$env_file" ]; then
        printf '%s\n' "$env_file" > /etc/default/shoal
        unit_changed=1
    fi
    systemctl daemon-reload
    systemctl enable shoal.service >/dev/null 2>&1
    if systemctl is-active -q shoal.service && { [ -n "$unit_changed" ] || [ "$before" != "$after" ]; }; then
        log "restart shoal (live restore keeps its containers)"
        systemctl restart shoal.service
    else
        systemctl start shoal.service
    fi
    wait_ready
    if ! api GET /images/json | grep -q '"shoal/demo:latest"'; then
        log "demo image shoal/demo:latest"
        local tmp
        tmp=$(mktemp -d)
        (cd "$src" && "$venv/bin/python" -c \
            'import sys; from pathlib import Path; from cli.lab.demo import build_demo_archive; build_demo_archive(Path(sys.argv[1]))' \
            "$tmp")
        api POST /images/load -H 'Content-Type: application/x-tar' --data-binary "@$tmp/demo-image.tar" >/dev/null
        rm -rf "$tmp"
    fi
    log "ready"
}

install_file() { command install -m 0644 "$1" "$2"; }

api() {  # the daemon's Engine API on its socket (curl: the CLI's start costs seconds in TCG)
    local method=$1 path=$2; shift 2
    curl -sf --unix-socket /run/shoal/shoal.sock -X "$method" "$@" "http://shoal$path"
}

wait_ready() {
    local i
    for i in $(seq 1 240); do
        api GET /_ping >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    journalctl -u shoal.service -n 30 --no-pager >&2 || true
    log "shoal daemon not answering after 120 s"
    exit 1
}

case "${1:-}" in
    install) shift; [ "$#" -eq 1 ] || { echo "usage: $0 install ADDRESS" >&2; exit 2; }; install "$1" ;;
    *) echo "usage: $0 install ADDRESS" >&2; exit 2 ;;
esac
