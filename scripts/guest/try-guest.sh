#!/usr/bin/env bash
# Boots the guest kit's Linux (mainline virtio_can driver) with one VirtIO CAN device per socket
# given, and gives you a root shell on this terminal. Start vhost-device-can first.
#   scripts/guest/try-guest.sh /tmp/can.sock0 [/tmp/can.sock1 ...]
# In the guest: ip link set can0 up; candump can0 &; cansend can0 123#DEADBEEF; poweroff -f
# Options through the environment: GUEST_MEM_MIB (512), GUEST_CONFIG_SIZE (2), GUEST_KIT_DIR.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KIT_DIR=${GUEST_KIT_DIR:-$SCRIPT_DIR/../../.guest-kit}
MEM=${GUEST_MEM_MIB:-512}
CONFIG_SIZE=${GUEST_CONFIG_SIZE:-2}

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
for f in vmlinuz initramfs.gz; do
  if [[ ! -f $KIT_DIR/$f ]]; then
    echo "try-guest.sh: $KIT_DIR/$f is missing; build the kit with: sudo npm run guest:kit" >&2
    exit 2
  fi
done

args=()
i=0
for sock in "$@"; do
  if [[ ! -S $sock ]]; then
    echo "try-guest.sh: $sock is not a socket; is vhost-device-can running?" >&2
    exit 2
  fi
  args+=(-chardev "socket,id=can$i,path=$sock"
    -device "vhost-user-test-device-pci,chardev=can$i,virtio-id=36,num_vqs=3,config_size=$CONFIG_SIZE")
  i=$((i + 1))
done

share=$(mktemp -d)
trap 'rm -rf "$share"' EXIT
cat >"$share/scenario.sh" <<'SCENARIO'
echo "guest ready with $(ls /sys/class/net | grep -c '^can') CAN interface(s); try:"
echo "  ip link set can0 up; candump can0 & cansend can0 123#DEADBEEF"
SCENARIO

"$SCRIPT_DIR/qemu.sh" -accel tcg -m "$MEM" \
  -object "memory-backend-memfd,id=mem,size=${MEM}M,share=on" -machine q35,memory-backend=mem \
  -nographic -no-reboot -nic none -vga none \
  -kernel "$KIT_DIR/vmlinuz" -initrd "$KIT_DIR/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1 kit.shell=1" \
  -virtfs "local,path=$share,mount_tag=kit,security_model=none" \
  "${args[@]}"
