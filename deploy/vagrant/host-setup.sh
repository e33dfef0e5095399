#!/usr/bin/env bash
# Install what the Vagrant lab needs on a Debian 12 host, as root. Safe to run twice.
#   vagrant + vagrant-libvirt, libvirt and qemu (the VMs), debootstrap, qemu-img and grub's
#   boot images (the box builder), rsync (provisioning), systemd (systemd-analyze for the unit).
# Package scripts never start daemons here: lab.sh starts libvirtd/virtlogd itself and stops
# them by PID.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
          debootstrap fdisk e2fsprogs grub-pc-bin rsync openssh-client dnsmasq-base iptables iproute2 systemd
          python3-venv python3-pip)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "host-setup: apt packages: ${missing[*]}" >&2
    apt-get update -q
    created_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        created_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d
    trap - EXIT
fi
