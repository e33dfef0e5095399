#!/usr/bin/env bash
# Form a shoal swarm over ssh, from the machine that reaches every node: the first manager runs
# `swarm init`, the other managers join one at a time with the manager token, the workers with
# the worker token, all over the nodes' private addresses. Nodes already in a swarm are left as
# they are, so running it twice is harmless. Works for the Vagrant lab and for real machines.
#
#   form-swarm.sh --vagrant [--install]                       the VMs of deploy/vagrant (ssh-config
#                                                             from vagrant; roles from the names)
#   form-swarm.sh [-F SSH_CONFIG] [--install] --manager HOST[=ADDR]... [--worker HOST[=ADDR]...]
#
# HOST is anything ssh takes (user@host, an ssh_config alias); the user needs passwordless sudo.
# ADDR is the node's address on the swarm's network; without it, the one provision.sh wrote into
# the node's /etc/default/shoal. --install first copies this checkout to HOST:/opt/shoal/src
# (rsync) and runs provision.sh there (ADDR required then, unless already provisioned).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
ssh_config=
install=
vagrant_mode=
managers=()
workers=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        -F) ssh_config=$2; shift 2 ;;
        --install) install=1; shift ;;
        --vagrant) vagrant_mode=1; shift ;;
        --manager) managers+=("$2"); shift 2 ;;
        --worker) workers+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "form-swarm: unknown argument $1" >&2; exit 2 ;;
    esac
done
log() { echo "form-swarm: $*" >&2; }

ctl=$(mktemp -d /tmp/shoal-form-swarm.XXXXXX)
cleanup() {
    for sock in "$ctl"/cm-*; do
        [ -S "$sock" ] && ssh -o ControlPath="$sock" -O exit x >/dev/null 2>&1
    done
    rm -rf "$ctl"
}
trap cleanup EXIT

if [ -n "$vagrant_mode" ]; then
    (cd "$here" && vagrant ssh-config) > "$ctl/ssh_config" 2>/dev/null \
        || { log "vagrant ssh-config failed: are the VMs up?"; exit 1; }
    ssh_config="$ctl/ssh_config"
    while read -r _ name; do
        case "$name" in
            manager-*) managers+=("$name") ;;
            worker-*) workers+=("$name") ;;
        esac
    done < <(grep '^Host ' "$ssh_config")
    # manager-1 first, then by number
    mapfile -t managers < <(printf '%s\n' "${managers[@]}" | sort -t- -k2 -n)
    mapfile -t workers < <(printf '%s\n' "${workers[@]}" | sort -t- -k2 -n)
fi
[ "${#managers[@]}" -gt 0 ] || { log "no manager given"; exit 2; }

ssh_opts=(-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
          -o ConnectTimeout=20 -o ControlMaster=auto -o "ControlPath=$ctl/cm-%C" -o ControlPersist=120)
[ -n "$ssh_config" ] && ssh_opts=(-F "$ssh_config" "${ssh_opts[@]}")
on() { local host=$1; shift; ssh "${ssh_opts[@]}" "$host" "$@"; }

declare -A addr
for spec in "${managers[@]}" "${workers[@]}"; do
    host=${spec%%=*}
    [ "$spec" != "$host" ] && addr[$host]=${spec#*=}
done
managers=("${managers[@]%%=*}")
workers=("${workers[@]%%=*}")

provisioned_address() {  # what provision.sh wrote into the node's /etc/default/shoal
    on "$1" cat /etc/default/shoal | sed -n 's/^SHOAL_ADVERTISE_ADDR=\(.*\):2377$/\1/p'
}

if [ -n "$install" ]; then
    for host in "${managers[@]}" "${workers[@]}"; do
        log "$host: rsync checkout, provision"
        on "$host" 'sudo mkdir -p /opt/shoal/src && { command -v rsync >/dev/null || sudo apt-get install -y -q rsync; }'
        rsync -a --delete --rsync-path="sudo rsync" -e "ssh ${ssh_opts[*]}" \
            --exclude .git/ --exclude .venv/ --exclude .vagrant/ --exclude __pycache__/ --exclude '*.egg-info/' \
            --exclude .mypy_cache/ --exclude .ruff_cache/ --exclude .pytest_cache/ --exclude .hypothesis/ \
            "$repo/" "$host:/opt/shoal/src/"
        a=${addr[$host]:-$(provisioned_address "$host" 2>/dev/null || true)}
        [ -n "$a" ] || { log "$host: no address: give $host=ADDR"; exit 2; }
        on "$host" sudo bash /opt/shoal/src/deploy/vagrant/provision.sh install "$a"
    done
fi

address() {  # the node's swarm address: given, or provisioned
    local host=$1
    if [ -n "${addr[$host]:-}" ]; then echo "${addr[$host]}"; return; fi
    provisioned_address "$host"
}
state() {  # inactive | active (the node's LocalNodeState)
    on "$1" sudo curl -sf --unix-socket /run/shoal/shoal.sock http://shoal/info \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["Swarm"]["LocalNodeState"])'
}

first=${managers[0]}
first_addr=$(address "$first")
if [ "$(state "$first")" != active ]; then
    log "$first: swarm init --advertise-addr $first_addr"
    on "$first" sudo shoal swarm init --advertise-addr "$first_addr" >/dev/null
fi
tokens=$(on "$first" sudo curl -sf --unix-socket /run/shoal/shoal.sock http://shoal/swarm)  # = swarm join-token -q
manager_token=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["JoinTokens"]["Manager"])' <<<"$tokens")
worker_token=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["JoinTokens"]["Worker"])' <<<"$tokens")

join() {
    local host=$1 token=$2 a
    [ "$(state "$host")" = active ] && { log "$host: already in a swarm"; return 0; }
    a=$(address "$host")
    log "$host: swarm join --advertise-addr $a $first_addr:2377"
    on "$host" sudo shoal swarm join --token "$token" --advertise-addr "$a" "$first_addr:2377" >/dev/null
}
for host in "${managers[@]:1}"; do join "$host" "$manager_token"; done
for host in "${workers[@]}"; do join "$host" "$worker_token"; done
on "$first" sudo shoal node ls
