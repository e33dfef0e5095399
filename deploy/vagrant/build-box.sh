#!/usr/bin/env bash
# Build the Vagrant box of the VM lab from Debian packages only, as root: a Debian 12 qcow2 for
# the libvirt provider with everything shoal needs baked in (runc, conmon, nftables, iproute2,
# busybox-static, python3, and a virtualenv at /opt/shoal/venv holding shoal's Python
# dependencies from a wheelhouse built on this host). Installing packages inside a TCG guest is
# very slow (initramfs rebuilds), so nothing is installed at boot.
#
# Cached outside git: $SHOAL_BOX_CACHE (default /var/cache/shoal-vagrant)/shoal-debian12-<hash>.box,
# where <hash> covers this script and shoal's pinned dependencies. Prints the box's path; builds
# only when no box of that hash exists (--force rebuilds).
#
# Traps of this machine kind: the kernel has no partition table support for loop devices (no
# loop0p1, no grub-install onto a loop disk), so the root file system is made through an offset
# loop device and grub's boot images are written by hand; both machine-id files are emptied as
# the very last step, or every VM would share one machine-id, hence one set of interface MACs,
# and VXLAN between them fails. Another trap: a mount made in the host's mount namespace is copied
# into every namespace created meanwhile (`ip netns exec`, labs, tests), and there outlives our
# umount, so the file system is never flushed (`needs_recovery`: the guests then find it damaged
# and remount / read-only). The build runs in a private mount namespace of its own, and checks the
# file system is clean before packing it.
set -euo pipefail
if [ -z "${SHOAL_BOX_PRIVATE_MOUNTS:-}" ]; then
    SHOAL_BOX_PRIVATE_MOUNTS=1 exec unshare --mount --propagation private "$0" "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${SHOAL_BOX_CACHE:-/var/cache/shoal-vagrant}
mirror=${SHOAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
force=
[ "${1:-}" = --force ] && force=1

deps() {  # shoal's pinned runtime dependencies, one a line, from pyproject.toml
    python3 - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
}
packages=(linux-image-cloud-amd64 systemd systemd-sysv udev dbus openssh-server sudo rsync
          ca-certificates python3 python3-venv runc conmon nftables iproute2 busybox-static kmod
          procps psmisc curl netcat-openbsd less)

box_hash() {
    { cat "$here/build-box.sh"; deps; printf '%s\n' "${packages[@]}" "$mirror"; } \
        | sha256sum | cut -c1-16
}
hash=$(box_hash)
box="$cache/shoal-debian12-$hash.box"
if [ -z "$force" ] && [ -s "$box" ]; then
    echo "$box"
    exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
root="$work/root"
loop=
cleanup() {
    set +e
    for m in dev/pts dev proc sys; do mountpoint -q "$root/$m" && umount -l "$root/$m"; done
    mountpoint -q "$root" && umount "$root"
    [ -n "$loop" ] && losetup -d "$loop"
    rm -rf "$work"
}
trap cleanup EXIT
log() { echo "build-box: $*" >&2; }
t0=$(date +%s)

# 1. The wheelhouse, on the host (same Debian, same Python: the wheels fit the guest).
log "wheelhouse"
python3 -m venv "$work/hostvenv"
"$work/hostvenv/bin/pip" -q wheel --wheel-dir "$work/wheels" $(deps) > "$work/pip.log" 2>&1 \
    || { tail -20 "$work/pip.log" >&2; exit 1; }

# 2. The disk: one MBR partition from 1 MiB, made on the image file (no loop partitions here).
log "disk"
img="$work/disk.raw"
truncate -s 8G "$img"
echo 'start=2048, type=83, bootable' | sfdisk -q "$img"
loop=$(losetup --show -f -o $((2048 * 512)) --sizelimit $((8 * 1024 * 1024 * 1024 - 2048 * 512)) "$img")
mkfs.ext4 -q -L shoalroot "$loop"
mkdir -p "$root"
mount "$loop" "$root"

# 3. Debian 12 from the mirror, with every package baked in.
log "debootstrap ($(IFS=,; echo "${packages[*]}"))"
debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" bookworm "$root" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"

# 4. Configuration: vagrant user (the insecure key from the vagrant package), ssh, network, boot.
log "configure"
insecure_pub=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
[ -n "$insecure_pub" ] || { log "no vagrant.pub: install the vagrant package"; exit 1; }
echo shoal-box > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 shoal-box\n' > "$root/etc/hosts"
echo 'LABEL=shoalroot / ext4 defaults,noatime,errors=remount-ro 0 1' > "$root/etc/fstab"
cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
EOF
cat > "$root/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no

[DHCPv4]
UseDomains=yes
EOF
cat > "$root/etc/ssh/sshd_config.d/vagrant.conf" <<'EOF'
UseDNS no
PasswordAuthentication yes
EOF
mkdir -p "$root/etc/sudoers.d"
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/vagrant"
chmod 440 "$root/etc/sudoers.d/vagrant"
# Overlay, VXLAN and nftables modules at boot (the daemon loads them too; this saves a probe).
printf '%s\n' overlay vxlan br_netfilter nf_tables > "$root/etc/modules-load.d/shoal.conf"
cp "$insecure_pub" "$work/vagrant.pub"
install -m 0644 "$work/vagrant.pub" "$root/root/vagrant.pub"
mkdir -p "$root/opt/shoal"
cp -a "$work/wheels" "$root/opt/shoal/wheels"
chroot "$root" /bin/bash -eu <<'EOF'
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
useradd -m -s /bin/bash -G sudo vagrant
echo vagrant:vagrant | chpasswd
install -d -m 700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 600 -o vagrant -g vagrant /root/vagrant.pub /home/vagrant/.ssh/authorized_keys
rm /root/vagrant.pub
systemctl enable systemd-networkd ssh >/dev/null 2>&1
systemctl enable serial-getty@ttyS0 >/dev/null 2>&1 || true
# Nothing that burns CPU in the background of a TCG guest.
for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer; do
    systemctl disable "$t" >/dev/null 2>&1 || true
    systemctl mask "$t" >/dev/null 2>&1 || true
done
# Let the container runtime's nftables rules be the daemon's alone.
systemctl disable nftables >/dev/null 2>&1 || true
python3 -m venv /opt/shoal/venv
/opt/shoal/venv/bin/pip install -q --no-index --find-links /opt/shoal/wheels /opt/shoal/wheels/*.whl
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
EOF

# 5. The boot loader: grub's boot.img into the MBR (keeping the partition table) and a core.img
#    right behind it (sector 1, where boot.img's default points; its own blocklist defaults to
#    sector 2), with the modules to read grub.cfg from the root file system.
log "grub"
kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=initrd.img-${kernel#vmlinuz-}
mkdir -p "$root/boot/grub"
cat > "$root/boot/grub/grub.cfg" <<EOF
set timeout=0
set default=0
menuentry "Debian 12 (shoal lab)" {
    linux /boot/$kernel root=LABEL=shoalroot ro console=tty0 console=ttyS0,115200 net.ifnames=0 quiet mitigations=off
    initrd /boot/$initrd
}
EOF
grub_dir=/usr/lib/grub/i386-pc
grub-mkimage -O i386-pc -o "$work/core.img" -p '(hd0,msdos1)/boot/grub' \
    biosdisk part_msdos ext2 normal linux echo configfile search search_label test
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
[ "$core_sectors" -lt 2047 ] || { log "core.img too big ($core_sectors sectors)"; exit 1; }
dd if="$grub_dir/boot.img" of="$img" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$img" bs=512 seek=1 conv=notrunc status=none

# 6. Last: empty both machine-ids (each VM makes its own at first boot), then pack.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$root/var/lib/dbus/machine-id"
for pid in /proc/[0-9]*; do  # anything a package script left running inside the chroot
    if [ "$(readlink "$pid/root" 2>/dev/null)" = "$root" ]; then kill -9 "${pid#/proc/}" 2>/dev/null || true; fi
done
for m in dev/pts dev proc sys; do umount "$root/$m"; done
fstrim "$root" 2>/dev/null || true
umount "$root"
sync
if dumpe2fs -h "$loop" 2>/dev/null | grep -q needs_recovery || ! e2fsck -fn "$loop" >/dev/null 2>&1; then
    log "the root file system is not clean after umount"
    exit 1
fi
losetup -d "$loop"
loop=
log "qcow2"
qemu-img convert -c -O qcow2 "$img" "$work/box.img"
rm -f "$img"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":8}\n' > "$work/metadata.json"
cat > "$work/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF
tar -C "$work" -cf "$box.tmp" metadata.json Vagrantfile box.img
mv "$box.tmp" "$box"
find "$cache" -maxdepth 1 -name 'shoal-debian12-*.box' ! -name "$(basename "$box")" -delete
log "built $box ($(du -h "$box" | cut -f1)) in $(( $(date +%s) - t0 )) s"
echo "$box"
