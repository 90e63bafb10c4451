#!/bin/sh
# Guest half of host-kernel-run.sh. host-kernel-run.sh copies it into the run's work directory
# as scenario.sh; the kit initramfs' /init (guest-init.sh) mounts that directory (9p tag "kit")
# at /mnt and runs it with dash, after loading the CAN modules (can can-raw can-dev vcan vxcan
# can-gw can-bcm sja1000 kvaser_pci ...) and bringing lo up. It:
#  1. mounts the HOST's root filesystem (9p tag "hostroot", read-only, cache=loose) at /newroot;
#  2. mounts proc, sysfs, devtmpfs, devpts and tmpfs (/tmp, /run, /var/tmp, /dev/shm) inside it,
#     bind-mounts back the paths that must stay visible (the repo, the cwd) when a tmpfs hides
#     them, mounts the read-write shares (9p tags rw0, rw1, ...) at their host paths and the
#     work directory (/mnt) at its host path;
#  3. runs WORKDIR/command.sh with the host's bash inside `chroot /newroot`, stdout and stderr
#     into WORKDIR/stdout.log and WORKDIR/stderr.log (through FIFOs: the command sees pipes);
#  4. writes /mnt/command-started, /mnt/command-ended (guest uptime), /mnt/command-status and
#     /mnt/dmesg.txt, and exits with the command's status (guest-init.sh then powers off).
# A failure before the command runs is written to /mnt/setup-error and exits with 125.
# Settings come from /mnt/host-kernel.env (written by host-kernel-run.sh).

set -u
ENV_FILE=/mnt/host-kernel.env
R=/newroot
# A second view of the host root: paths hidden by the tmpfs mounts are bind-mounted from here.
RO=/hostroot

fail() {
  echo "host-kernel-guest: SETUP FAILED: $*"
  echo "$*" >>/mnt/setup-error
  exit 125
}
# Mounts and fails loudly: mnt WHAT... (busybox mount arguments)
mnt() {
  out=$(mount "$@" 2>&1) || fail "mount $*: $out"
}
# is_hidden PATH: true when PATH lies below one of the tmpfs mounts made here.
is_hidden() {
  case $1 in
  /tmp | /tmp/* | /run | /run/* | /var/tmp | /var/tmp/* | /dev/shm | /dev/shm/*) return 0 ;;
  *) return 1 ;;
  esac
}

[ -f "$ENV_FILE" ] || fail "$ENV_FILE is missing"
# shellcheck source=/dev/null
. "$ENV_FILE"
: "${HK_WORKDIR:?}" "${HK_KEEP:?}" "${HK_RW_COUNT:?}" "${HK_RO_OPTS:?}" "${HK_RW_OPTS:?}"

hostname host-kernel-guest 2>/dev/null
mkdir -p "$R" "$RO"
mnt -t 9p -o "trans=virtio,version=9p2000.L,ro,$HK_RO_OPTS" hostroot "$R"
# Taken before anything is mounted below $R (the initramfs' mounts are private, so later
# submounts of $R do not show up here).
mnt -o bind "$R" "$RO"

mnt -t proc proc "$R/proc"
mnt -t sysfs sysfs "$R/sys"
mnt -t devtmpfs devtmpfs "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mnt -t devpts devpts "$R/dev/pts"
mnt -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
# devtmpfs has no /dev/fd (bash process substitution, `cat /dev/stdin`): add the usual links.
[ -e "$R/dev/fd" ] || ln -s /proc/self/fd "$R/dev/fd"
[ -e "$R/dev/stdin" ] || ln -s /proc/self/fd/0 "$R/dev/stdin"
[ -e "$R/dev/stdout" ] || ln -s /proc/self/fd/1 "$R/dev/stdout"
[ -e "$R/dev/stderr" ] || ln -s /proc/self/fd/2 "$R/dev/stderr"
mnt -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mnt -t tmpfs -o mode=755 tmpfs "$R/run"
if [ -d "$R/var/tmp" ]; then mnt -t tmpfs -o mode=1777 tmpfs "$R/var/tmp"; fi
mkdir -p "$R/tmp/home"

# Paths that must stay as on the host although a tmpfs above hides them (repo, cwd).
old_ifs=$IFS
IFS='
'
for p in $HK_KEEP; do
  if is_hidden "$p"; then
    [ -d "$RO$p" ] || fail "$p does not exist in the host root"
    mkdir -p "$R$p"
    mnt -o bind "$RO$p" "$R$p"
  fi
done
IFS=$old_ifs

i=0
while [ "$i" -lt "$HK_RW_COUNT" ]; do
  eval "p=\$HK_RW_$i"
  mkdir -p "$R$p" 2>/dev/null
  [ -d "$R$p" ] || fail "no directory $p in the guest for share rw$i"
  mnt -t 9p -o "trans=virtio,version=9p2000.L,$HK_RW_OPTS" "rw$i" "$R$p"
  i=$((i + 1))
done

mkdir -p "$R$HK_WORKDIR" 2>/dev/null
[ -d "$R$HK_WORKDIR" ] || fail "no directory $HK_WORKDIR in the guest for the work directory"
mnt -o bind /mnt "$R$HK_WORKDIR"
[ -f "$R$HK_WORKDIR/command.sh" ] || fail "$HK_WORKDIR/command.sh is not visible inside the chroot"
[ -x "$R/bin/bash" ] || fail "the host root has no /bin/bash"

# The command writes into FIFOs (pipes, like under a normal shell) and cat copies them into the
# share: a 9p write returns only once the host has it, so nothing is lost at poweroff.
mkfifo /tmp/hk-out /tmp/hk-err || fail "mkfifo"
cat /tmp/hk-out >>/mnt/stdout.log &
cat_out=$!
cat /tmp/hk-err >>/mnt/stderr.log &
cat_err=$!

cut -d' ' -f1 /proc/uptime >/mnt/command-started
echo "host-kernel-guest: running the command (guest uptime $(cat /mnt/command-started) s)"
chroot "$R" /usr/bin/env -i /bin/bash --noprofile --norc "$HK_WORKDIR/command.sh" \
  </dev/null >/tmp/hk-out 2>/tmp/hk-err
status=$?
# Background processes the command left behind could keep the FIFOs open: end them after a grace.
(
  sleep 2
  kill "$cat_out" "$cat_err" 2>/dev/null
) &
wait "$cat_out" "$cat_err"
cut -d' ' -f1 /proc/uptime >/mnt/command-ended
echo "$status" >/mnt/command-status
echo "host-kernel-guest: command exit status $status (guest uptime $(cat /mnt/command-ended) s)"
dmesg >/mnt/dmesg.txt 2>&1
sync
exit "$status"
