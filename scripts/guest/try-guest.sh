#!/usr/bin/env bash
# Boots the guest kit's Linux (mainline virtio_can driver) with one VirtIO CAN device per socket
# given, and gives you a root shell on this terminal. Start vhost-device-can first.
#   scripts/guest/try-guest.sh /tmp/can.sock0 [/tmp/can.sock1 ...] [--console /tmp/con.sock0]
# In the guest: ip link set can0 up; candump can0 &; cansend can0 123#DEADBEEF; poweroff -f
# --console SOCK adds a VirtIO console on a vhost-device-console socket, with a shell on hvc0.
# Options through the environment: GUEST_MEM_MIB (512), GUEST_CONFIG_SIZE (2), GUEST_KIT_DIR,
# GUEST_CONSOLE_PORTS (named ports the console daemon was given with --port-name, default 0).
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
console=""
while (($# > 0)); do
  if [[ $1 == --console ]]; then
    [[ $# -ge 2 && -S $2 ]] || { echo "try-guest.sh: --console needs a socket; is vhost-device-console running?" >&2; exit 2; }
    console=$2
    args+=(-chardev "socket,id=con0,path=$2"
      -device "vhost-user-test-device-pci,chardev=con0,virtio-id=3,num_vqs=$((2 * (${GUEST_CONSOLE_PORTS:-0} + 2))),config_size=12")
    shift 2
    continue
  fi
  sock=$1
  if [[ ! -S $sock ]]; then
    echo "try-guest.sh: $sock is not a socket; is vhost-device-can running?" >&2
    exit 2
  fi
  args+=(-chardev "socket,id=can$i,path=$sock"
    -device "vhost-user-test-device-pci,chardev=can$i,virtio-id=36,num_vqs=3,config_size=$CONFIG_SIZE")
  i=$((i + 1))
  shift
done

share=$(mktemp -d)
trap 'rm -rf "$share"' EXIT
cat >"$share/scenario.sh" <<'SCENARIO'
echo "guest ready with $(ls /sys/class/net | grep -c '^can') CAN interface(s); try:"
echo "  ip link set can0 up; candump can0 & cansend can0 123#DEADBEEF"
if [ -e /dev/hvc0 ]; then
  # A shell on the VirtIO console, started again whenever it exits.
  setsid sh -c 'while :; do sh </dev/hvc0 >/dev/hvc0 2>&1; sleep 1; done' &
  echo "a shell runs on hvc0 (the vhost-device-console client)"
fi
SCENARIO

"$SCRIPT_DIR/qemu.sh" -accel tcg -m "$MEM" \
  -object "memory-backend-memfd,id=mem,size=${MEM}M,share=on" -machine q35,memory-backend=mem \
  -nographic -no-reboot -nic none -vga none \
  -kernel "$KIT_DIR/vmlinuz" -initrd "$KIT_DIR/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1 kit.shell=1" \
  -virtfs "local,path=$share,mount_tag=kit,security_model=none" \
  "${args[@]}"
