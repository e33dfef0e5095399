#!/usr/bin/env bash
# The lab of real VMs, as root: one entry point like deploy/lab.sh, for Vagrant + libvirt.
#
#   lab.sh up [--managers N] [--workers M]   box (built or reused), VMs, shoal under systemd, swarm
#   lab.sh ls                                the VMs and `shoal node ls`
#   lab.sh ssh NODE [COMMAND...]             a shell (or a command) on a VM, as vagrant
#   lab.sh ssh-config                        the ssh_config of the VMs (ssh -F FILE NODE)
#   lab.sh exec COMMAND...                   a host command beside the VMs (in the lab's namespace)
#   lab.sh down                              remove everything up started; also after a crash
#   lab.sh purge                             down, then forget the box (cache, vagrant, libvirt copy)
#
# libvirt: a running system libvirtd (a desktop with systemd) is used as it is. Otherwise (here)
# the lab starts virtlogd and libvirtd by hand inside a network namespace of its own, so the VMs'
# networks (198.19.0.0/24 management, 198.19.1.0/24 swarm; the namespace lab uses 198.18.0.x)
# live there with no route out, and records their PIDs in $SHOAL_VAGRANT_STATE; `down` stops them
# by PID. The libvirt driver is kvm where real KVM works and qemu (TCG, cpu qemu64) otherwise
# (SHOAL_LIBVIRT_DRIVER overrides). With qemu, libvirtd also gets a private mount namespace
# where /dev/kvm is masked: libvirt re-probes qemu on every call while it sees a /dev/kvm it
# cannot use. The host's own /dev/kvm is never touched.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${SHOAL_VAGRANT_STATE:-/run/shoal-vagrant}
netns=${SHOAL_VAGRANT_NETNS:-shoal-vagrant}
cache=${SHOAL_BOX_CACHE:-/var/cache/shoal-vagrant}
prefix=${SHOAL_LIBVIRT_PREFIX:-shoal-vagrant-}
box_name=shoal/debian12
libvirt_networks=(shoal-vagrant-mgmt shoal-vagrant-swarm)
export SHOAL_LIBVIRT_PREFIX=$prefix VAGRANT_DEFAULT_PROVIDER=${VAGRANT_DEFAULT_PROVIDER:-libvirt}
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_NO_PLUGINS_UPDATE=1
log() { echo "lab: $*" >&2; }

need_root() { [ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }; }

kvm_works() {  # real KVM: a usable /dev/kvm from kvm_intel/kvm_amd (not this machine kind's kvm_pvm)
    [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] \
        && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

stop_pid() {  # SIGTERM, up to 10 s, then SIGKILL; only if PID still runs the program named
    local pid=$1 name=$2 i
    pid_alive "$pid" || return 0
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
        "$name"*) ;;
        *) return 0 ;;  # gone, and the PID reused by something else
    esac
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do pid_alive "$pid" || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

in_ns() {  # run a command where the VMs' networks are (the lab's namespace, if it has one)
    if [ -f "$state/netns" ]; then ip netns exec "$(cat "$state/netns")" "$@"; else "$@"; fi
}

system_libvirt() {  # a libvirtd this script did not start answers
    [ ! -f "$state/libvirtd.pid" ] && virsh -c qemu:///system version >/dev/null 2>&1
}

start_libvirt() {
    local driver=$1
    mkdir -p "$state"
    if ! ip netns list | grep -qw "$netns"; then
        ip netns add "$netns"
    fi
    echo "$netns" > "$state/netns"
    ip -n "$netns" link set lo up   # nothing else: no uplink, no route out
    mkdir -p /run/libvirt /var/lib/libvirt/images /var/log/libvirt/qemu
    log "virtlogd and libvirtd in namespace $netns"
    ip netns exec "$netns" virtlogd -d -p "$state/virtlogd.pid"
    local mask=""
    if [ "$driver" = qemu ] && [ -e /dev/kvm ]; then
        mask="mount --bind /dev/null /dev/kvm && "  # in libvirtd's own mount namespace only
    fi
    ip netns exec "$netns" unshare --mount --propagation private \
        sh -c "${mask}exec libvirtd -d -p '$state/libvirtd.pid'"
    local i
    for i in $(seq 1 300); do
        virsh -c qemu:///system version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "libvirtd did not answer; see /var/log/libvirt"
    return 1
}

save_env() {
    {
        printf 'export SHOAL_MANAGERS=%q SHOAL_WORKERS=%q SHOAL_LIBVIRT_DRIVER=%q\n' \
            "$SHOAL_MANAGERS" "$SHOAL_WORKERS" "$SHOAL_LIBVIRT_DRIVER"
        [ -n "${SHOAL_BOX:-}" ] && printf 'export SHOAL_BOX=%q\n' "$SHOAL_BOX"
        [ -n "${SHOAL_VM_CONSOLE_DIR:-}" ] && printf 'export SHOAL_VM_CONSOLE_DIR=%q\n' "$SHOAL_VM_CONSOLE_DIR"
        true
    } > "$state/env"
}
load_env() { [ -f "$state/env" ] && . "$state/env"; return 0; }

ensure_box() {  # build (or reuse) the box; register it with vagrant and libvirt when it changed
    local box hash
    box=$("$here/build-box.sh")
    hash=$(basename "$box" .box)
    if [ "$(cat "$cache/registered" 2>/dev/null)" != "$hash" ] || ! vagrant box list 2>/dev/null | grep -q "^$box_name "; then
        log "vagrant box add $box_name ($hash)"
        vagrant box add --force --name "$box_name" "$box" >/dev/null
        echo "$hash" > "$cache/registered"
        echo stale > "$state/box-volume-stale"
    fi
}

drop_stale_box_volume() {  # vagrant-libvirt reuses its uploaded copy of a box by name
    [ -f "$state/box-volume-stale" ] || return 0
    local vol
    for vol in $(virsh -c qemu:///system vol-list default 2>/dev/null | awk '/shoal-VAGRANTSLASH-debian12/ {print $1}'); do
        virsh -c qemu:///system vol-delete --pool default "$vol" >/dev/null
    done
    rm -f "$state/box-volume-stale"
}

up() {
    need_root
    export SHOAL_MANAGERS=${SHOAL_MANAGERS:-3} SHOAL_WORKERS=${SHOAL_WORKERS:-2}
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --managers) SHOAL_MANAGERS=$2; shift 2 ;;
            --workers) SHOAL_WORKERS=$2; shift 2 ;;
            *) log "unknown argument $1"; exit 2 ;;
        esac
    done
    if [ -d "$state" ]; then
        log "a lab is (or was) up: removing it first"
        down
    fi
    "$here/host-setup.sh"
    if [ -z "${SHOAL_LIBVIRT_DRIVER:-}" ]; then
        if kvm_works; then SHOAL_LIBVIRT_DRIVER=kvm; else SHOAL_LIBVIRT_DRIVER=qemu; fi
    fi
    export SHOAL_LIBVIRT_DRIVER
    mkdir -p "$state"
    save_env
    if [ -z "${SHOAL_BOX:-}" ]; then ensure_box; fi
    if system_libvirt; then
        log "using the running libvirtd"
    else
        start_libvirt "$SHOAL_LIBVIRT_DRIVER"
    fi
    drop_stale_box_volume
    # Bytecode made here travels with the rsync: compiling the checkout in a TCG guest takes a minute.
    (cd "$repo" && python3 -m compileall -q -j 0 model raft rpc ca engineapi aio manager worker overlay ingress node cli \
        >/dev/null 2>&1) || true
    log "vagrant up: $SHOAL_MANAGERS managers, $SHOAL_WORKERS workers (libvirt driver $SHOAL_LIBVIRT_DRIVER)"
    local t0=$SECONDS
    (cd "$here" && in_ns vagrant up --provider libvirt)
    log "VMs up and provisioned in $((SECONDS - t0)) s"
    (cd "$here" && in_ns vagrant ssh-config) > "$state/ssh_config"
    in_ns "$here/form-swarm.sh" -F "$state/ssh_config" \
        $(for i in $(seq 1 "$SHOAL_MANAGERS"); do echo --manager "manager-$i"; done) \
        $(for i in $(seq 1 "$SHOAL_WORKERS"); do echo --worker "worker-$i"; done)
    log "up in $((SECONDS - t0)) s: ./deploy/vagrant/lab.sh ssh manager-1"
}

ls_lab() {
    [ -d "$state" ] || { log "no lab is up"; return 0; }
    load_env
    (cd "$here" && in_ns vagrant status)
    ssh_node manager-1 sudo shoal node ls || true
}

ssh_node() {
    [ "$#" -ge 1 ] || { log "usage: lab.sh ssh NODE [COMMAND...]"; exit 2; }
    [ -f "$state/ssh_config" ] || { log "no lab is up"; exit 1; }
    local node=$1; shift
    local tty=()
    [ "$#" -eq 0 ] && tty=(-t)
    in_ns ssh "${tty[@]}" -F "$state/ssh_config" -o LogLevel=ERROR "$node" "$@"
}

down() {
    need_root
    load_env
    export SHOAL_MANAGERS=${SHOAL_MANAGERS:-3} SHOAL_WORKERS=${SHOAL_WORKERS:-2}
    local ours=
    [ -f "$state/libvirtd.pid" ] && ours=1
    if [ -n "$ours" ] && ! pid_alive "$(cat "$state/libvirtd.pid")"; then
        log "our libvirtd is gone: restarting it to clean up through it"
        rm -f "$state/libvirtd.pid"
        [ -f "$state/virtlogd.pid" ] && stop_pid "$(cat "$state/virtlogd.pid")" virtlogd && rm -f "$state/virtlogd.pid"
        start_libvirt "${SHOAL_LIBVIRT_DRIVER:-qemu}" || true
    fi
    if virsh -c qemu:///system version >/dev/null 2>&1; then
        local dom net
        # The lab's domains and networks, by name (vagrant destroy would need vagrant's own state).
        for dom in $(virsh -c qemu:///system list --all --name 2>/dev/null | grep "^$prefix" || true); do
            log "domain $dom"
            virsh -c qemu:///system destroy "$dom" >/dev/null 2>&1 || true
            virsh -c qemu:///system undefine "$dom" --remove-all-storage --nvram >/dev/null 2>&1 \
                || virsh -c qemu:///system undefine "$dom" --remove-all-storage >/dev/null 2>&1 || true
        done
        for net in "${libvirt_networks[@]}"; do
            if virsh -c qemu:///system net-info "$net" >/dev/null 2>&1; then
                log "network $net"
                virsh -c qemu:///system net-destroy "$net" >/dev/null 2>&1 || true
                virsh -c qemu:///system net-undefine "$net" >/dev/null 2>&1 || true
            fi
        done
        local vol
        for vol in $(virsh -c qemu:///system vol-list default 2>/dev/null | awk -v p="$prefix" 'index($1, p) == 1 {print $1}'); do
            virsh -c qemu:///system vol-delete --pool default "$vol" >/dev/null 2>&1 || true
        done
    fi
    if [ -n "$ours" ] || [ -f "$state/virtlogd.pid" ]; then
        local name
        for name in libvirtd virtlogd; do
            if [ -f "$state/$name.pid" ]; then
                log "stop $name (pid $(cat "$state/$name.pid"))"
                stop_pid "$(cat "$state/$name.pid")" "$name"
                rm -f "$state/$name.pid"
            fi
        done
        # What a dead libvirtd could not stop: qemu and dnsmasq processes of the lab, by their PID files.
        local f
        for f in /run/libvirt/qemu/"$prefix"*.pid /run/libvirt/network/shoal-vagrant-*.pid; do
            [ -f "$f" ] || continue
            if pid_alive "$(cat "$f")"; then
                log "stop $(basename "$f" .pid) (pid $(cat "$f"))"
                case "$f" in
                    */qemu/*) stop_pid "$(cat "$f")" qemu-system ;;
                    *) stop_pid "$(cat "$f")" dnsmasq ;;
                esac
            fi
            rm -f "$f"
        done
        rm -f /etc/libvirt/qemu/"$prefix"*.xml /etc/libvirt/qemu/networks/shoal-vagrant-*.xml \
              /etc/libvirt/qemu/networks/autostart/shoal-vagrant-*.xml \
              /run/libvirt/qemu/"$prefix"*.xml
        rm -rf /run/libvirt/network/shoal-vagrant-*
    fi
    if ip netns list 2>/dev/null | grep -qw "$netns"; then
        log "namespace $netns"
        ip netns delete "$netns"
    fi
    rm -rf "$here/.vagrant/machines" "$state"
    log "down"
}

purge() {
    down
    log "forget the box: $cache, vagrant box $box_name, libvirt's copy"
    vagrant box remove --force --all "$box_name" >/dev/null 2>&1 || true
    if virsh -c qemu:///system version >/dev/null 2>&1; then  # a system libvirtd: through it
        mkdir -p "$state" && echo stale > "$state/box-volume-stale" && drop_stale_box_volume
        rm -rf "$state"
    fi
    rm -f /var/lib/libvirt/images/shoal-VAGRANTSLASH-debian12_vagrant_box_image_*.img
    rm -rf "$cache"
}

cmd=${1:-}
[ "$#" -gt 0 ] && shift
case "$cmd" in
    up) up "$@" ;;
    ls) ls_lab ;;
    ssh) ssh_node "$@" ;;
    ssh-config) cat "$state/ssh_config" ;;
    exec) in_ns "$@" ;;
    down) down ;;
    purge) purge ;;
    *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
