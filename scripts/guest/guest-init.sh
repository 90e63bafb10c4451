#!/bin/sh
# PID 1 of the guest kit's initramfs (installed as /init by stage-initramfs.sh; busybox ash).
#  1. mounts proc, sysfs, devtmpfs;
#  2. loads the modules listed in /etc/kit-modules, in that order (9p first, then CAN,
#     virtio_can, the emulated-controller drivers); every failure is reported loudly on the
#     console and in /mnt/init.log;
#  3. mounts the 9p share tagged "kit" at /mnt (the host's per-run share directory);
#  4. runs /mnt/scenario.sh with sh and writes its exit status to /mnt/exit-status;
#  5. syncs and powers off (QEMU runs with -no-reboot, so it exits).
# Kernel command line options: kit.shell=1 starts an interactive shell on the console instead
# of powering off (for manual debugging with scripts/guest/qemu.sh).
# Console lines starting with "kit-init:" are this script's; the host helper relies on none of
# them (it reads /mnt/exit-status), they are for people reading console.log.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
LOG=/run/init.log
SHARE=/mnt
failures=0

say() {
  echo "kit-init: $*"
  echo "$*" >>"$LOG"
}
loud() {
  echo "kit-init: !!!!!!!! $* !!!!!!!!"
  echo "ERROR: $*" >>"$LOG"
  failures=$((failures + 1))
}
finish() {
  sync
  if grep -q 'kit.shell=1' /proc/cmdline; then
    echo "kit-init: kit.shell=1: starting a shell; 'poweroff -f' to quit"
    setsid cttyhack sh
  fi
  poweroff -f
  # poweroff -f returns only if the reboot syscall failed.
  echo o >/proc/sysrq-trigger
  sleep 5
}

mkdir -p /proc /sys /dev /run /tmp "$SHARE"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
: >"$LOG"
say "kernel $(uname -r), $(wc -l </etc/kit-modules) modules to load"

kver=$(uname -r)
while read -r mod; do
  [ -n "$mod" ] || continue
  ko=/lib/modules/$kver/kit/$mod.ko
  if [ ! -f "$ko" ]; then
    loud "module $mod: $ko missing from the initramfs"
  elif out=$(insmod "$ko" 2>&1); then
    echo "loaded $mod" >>"$LOG"
  else
    loud "module $mod failed to load: $out"
  fi
done </etc/kit-modules
grep -q '^virtio_can ' /proc/modules || loud "virtio_can is not loaded"
say "modules loaded ($failures failures)"

ip link set lo up 2>/dev/null

if ! out=$(mount -t 9p -o trans=virtio,version=9p2000.L kit "$SHARE" 2>&1); then
  loud "cannot mount the 9p share 'kit' at $SHARE: $out (is -virtfs ...,mount_tag=kit given?)"
  cat "$LOG"
  finish
fi
cp "$LOG" "$SHARE/init.log"
cat /proc/modules >"$SHARE/modules.txt"

if [ ! -f "$SHARE/scenario.sh" ]; then
  loud "no $SHARE/scenario.sh in the share"
  status=127
else
  say "scenario start"
  cd /tmp || true
  sh "$SHARE/scenario.sh"
  status=$?
  cd / || true
  say "scenario exit status $status"
fi
echo "$status" >"$SHARE/exit-status"
cp "$LOG" "$SHARE/init.log"
sync
finish
