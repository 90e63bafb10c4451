#!/usr/bin/env bash
# Runs the guest kit's QEMU (Debian trixie-backports qemu-system-x86_64, built by build-kit.sh)
# directly on the host: the chroot's binary is started through the chroot's own dynamic loader
# with --library-path pointing at the chroot's libraries, and -L at its firmware. No chroot is
# entered, so host paths (vhost-user sockets, 9p share directories) work unchanged.
#
# usage: qemu.sh QEMU-ARGS...     (GUEST_KIT_DIR defaults to <repo>/.guest-kit)
# e.g.   qemu.sh -device help | grep vhost-user
#
# The process execs into QEMU (same pid), so signals sent to it reach QEMU.
# test/e2e/helpers/guest.ts builds the same command line from manifest.json.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KIT_DIR=${GUEST_KIT_DIR:-$SCRIPT_DIR/../../.guest-kit}
ROOTFS=$KIT_DIR/rootfs
LOADER=$ROOTFS/usr/lib64/ld-linux-x86-64.so.2
QEMU=$ROOTFS/usr/bin/qemu-system-x86_64

if [[ ! -x $QEMU || ! -e $LOADER ]]; then
  echo "qemu.sh: no guest kit QEMU at $QEMU; build it with: sudo scripts/guest/build-kit.sh" >&2
  exit 2
fi

# Directories written by build-kit.sh (ldd of QEMU inside the chroot); fall back to the usual ones.
libpath=""
if [[ -s $KIT_DIR/qemu-libdirs ]]; then
  while read -r d; do libpath+="${libpath:+:}$ROOTFS$d"; done <"$KIT_DIR/qemu-libdirs"
else
  libpath=$ROOTFS/usr/lib/x86_64-linux-gnu:$ROOTFS/usr/lib64
fi

# QEMU_MODULE_DIR: QEMU loads optional modules (UI, audio, some devices) with dlopen from a
# compiled-in /usr/lib/... path that does not exist on the host.
exec env QEMU_MODULE_DIR="$ROOTFS/usr/lib/x86_64-linux-gnu/qemu" \
  "$LOADER" --library-path "$libpath" "$QEMU" \
  -L "$ROOTFS/usr/share/qemu" -L "$ROOTFS/usr/share/seabios" "$@"
