#!/usr/bin/env bash
# The kernel-client test (test/e2e/nbd-kernel.test.ts) boots a Debian kernel under qemu, because the machines' own
# kernel has no nbd module. This installs qemu, nbd-client, busybox and e2fsprogs (the host checks the guest's
# filesystem with e2fsck and debugfs), and unpacks from Debian's current kernel
# package only what the guest needs (the kernel and seven modules) into node_modules/.cache/dst-kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=node_modules/.cache/dst-kernel
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
packages="qemu-system-x86 nbd-client busybox-static e2fsprogs"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq --no-install-recommends $missing
fi
if ls "$dest"/boot/vmlinuz-* >/dev/null 2>&1; then exit 0; fi
kernel_package () { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'; }
image=$(kernel_package)
if [ -z "$image" ]; then
  # No package lists on this machine (an image that removed them): fetch them and ask again.
  $sudo apt-get update -qq
  image=$(kernel_package)
fi
[ -n "$image" ] || { echo "kernel.sh: no linux-image package behind linux-image-amd64" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$image" >/dev/null 2>&1) || (cd "$work" && $sudo apt-get download "$image")
mkdir -p "$dest"
dpkg-deb --fsys-tarfile "$work"/*.deb | tar -x -C "$dest" --wildcards './boot/vmlinuz-*' \
  '*/kernel/lib/crc16.ko' '*/kernel/fs/mbcache.ko' '*/kernel/fs/jbd2/jbd2.ko' '*/kernel/crypto/crc32c_generic.ko' \
  '*/kernel/fs/ext4/ext4.ko' '*/kernel/drivers/net/ethernet/intel/e1000/e1000.ko' '*/kernel/drivers/block/nbd.ko'
echo "kernel for the NBD kernel-client test: $(ls "$dest"/boot)"
