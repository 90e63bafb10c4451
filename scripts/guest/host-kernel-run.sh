#!/usr/bin/env bash
# Runs a command of this project on a CAN-capable kernel: boots the guest kit's Debian Linux
# (AF_CAN, vcan, vxcan, can-gw, sja1000/kvaser_pci as modules) under QEMU/TCG with the HOST's
# own root filesystem shared read-only over 9p, chroots into it and runs COMMAND there, so
# node, the checkout and can-utils run unchanged. COMMAND's stdout/stderr come out on this
# script's stdout/stderr (live), and its exit status is this script's exit status.
#
# usage: scripts/guest/host-kernel-run.sh [OPTIONS] -- COMMAND [ARG...]
#   --kvaser N       N emulated Kvaser PCI (SJA1000) controllers on one QEMU can-bus: can0..canN-1
#   --timeout S      kill the guest after S seconds (default 600): exit status 124
#   --mem MiB        guest RAM (default 2048)       --cpus N   vCPUs (default 2)
#   --rw DIR         also share host DIR read-write at the same path (repeatable; the default
#                    read-write share is <repo>/.test-artifacts, everything else is read-only)
#   --env NAME=VAL   set an environment variable for COMMAND (repeatable)
#   --work-dir DIR   where the run's files go (default <repo>/.test-artifacts/host-kernel-<stamp>-XXXXXX)
#   --console        also copy the guest console (kernel, init) to stderr
#   --quiet          no host-kernel-run: progress lines on stderr (errors are still shown)
# Exit status: COMMAND's; 124 timeout; 125 the guest never ran COMMAND (console.log tail shown);
# 2 usage error or missing kit (sudo scripts/guest/build-kit.sh). The work directory says which
# (command-status exists only when COMMAND ran). Details: scripts/guest/README.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd -P)
KIT_DIR=${GUEST_KIT_DIR:-$REPO_DIR/.guest-kit}
GUEST_SCRIPT=$SCRIPT_DIR/host-kernel-guest.sh
SETPRIV=/usr/bin/setpriv
# 9p mount options. The host root is read-only and (for the guest's lifetime) unchanging, so
# cache=loose is safe and makes node's start-up several times faster than cache=none. The
# read-write shares stay uncached so the host sees every write at once.
RO_OPTS="cache=loose,msize=512000"
RW_OPTS="msize=512000"
# Variables copied from this environment into COMMAND's when set (besides PATH and --env).
PASS_ENV=(LANG LC_ALL TZ CI NO_COLOR FORCE_COLOR NODE_OPTIONS NODE_DEBUG TEST_CONCURRENCY GUEST_KIT_DIR DEBUG)

usage() { sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() {
  echo "host-kernel-run: $*" >&2
  exit 2
}
QUIET=0
say() { ((QUIET)) || echo "host-kernel-run: $*" >&2; }
posint() { [[ $2 =~ ^[0-9]+$ && $2 -ge $3 ]] || die "$1 must be an integer >= $3, got '$2'"; }
# POSIX single quoting (for the dash-sourced env file).
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
# QEMU option values: a comma is written as two.
qv() { printf '%s' "${1//,/,,}"; }

KVASER=0 TIMEOUT=600 MEM=2048 CPUS=2 WORK_DIR="" CONSOLE=0
RW_DIRS=() ENV_ARGS=()
while (($# > 0)); do
  case $1 in
  --kvaser | --timeout | --mem | --cpus | --rw | --env | --work-dir)
    (($# >= 2)) || die "$1 needs a value"
    case $1 in
    --kvaser) KVASER=$2 ;;
    --timeout) TIMEOUT=$2 ;;
    --mem) MEM=$2 ;;
    --cpus) CPUS=$2 ;;
    --rw) RW_DIRS+=("$2") ;;
    --env) ENV_ARGS+=("$2") ;;
    --work-dir) WORK_DIR=$2 ;;
    esac
    shift 2
    ;;
  --console) CONSOLE=1 && shift ;;
  --quiet) QUIET=1 && shift ;;
  -h | --help) usage && exit 0 ;;
  --) shift && break ;;
  *) die "unknown option '$1' (the command goes after --; --help for usage)" ;;
  esac
done
(($# > 0)) || {
  usage >&2
  exit 2
}
posint --kvaser "$KVASER" 0
posint --timeout "$TIMEOUT" 1
posint --mem "$MEM" 256
posint --cpus "$CPUS" 1
for e in "${ENV_ARGS[@]}"; do
  [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, got '$e'"
done

[[ ${VHOST_TS_IN_GUEST:-} != 1 ]] || die "already inside a host-kernel guest (VHOST_TS_IN_GUEST=1): nesting is not supported"
for f in vmlinuz initramfs.gz rootfs/usr/bin/qemu-system-x86_64; do
  [[ -e $KIT_DIR/$f ]] || die "guest kit incomplete or missing: no $KIT_DIR/$f; build it (as root, about 1-2 min, then cached) with: sudo scripts/guest/build-kit.sh"
done
[[ -x $SETPRIV ]] || die "$SETPRIV is missing (util-linux): it keeps QEMU from outliving this script"
command -v timeout >/dev/null || die "timeout (coreutils) is missing"
command -v cansend >/dev/null || say "warning: can-utils are not installed on the host, so cansend/candump do not exist in the guest either (apt-get install can-utils)"

# Physical paths: the guest resolves them in the same tree, symlinks included.
CWD=$(pwd -P)
case $CWD/ in /proc/* | /sys/* | /dev/*) die "the current directory $CWD does not exist in the guest" ;; esac
ARTIFACTS_DIR=$REPO_DIR/.test-artifacts
mkdir -p "$ARTIFACTS_DIR"
RW_REAL=("$ARTIFACTS_DIR")
for d in "${RW_DIRS[@]}"; do
  [[ -d $d ]] || die "--rw $d: not a directory"
  d=$(cd "$d" && pwd -P)
  [[ $d != / ]] || die "--rw /: the root stays read-only"
  case $d/ in /proc/* | /sys/* | /dev/*) die "--rw $d: not shareable" ;; esac
  RW_REAL+=("$d")
done
if [[ -n $WORK_DIR ]]; then
  mkdir -p "$WORK_DIR"
  [[ -z $(ls -A "$WORK_DIR") ]] || die "--work-dir $WORK_DIR is not empty"
else
  WORK_DIR=$(mktemp -d "$ARTIFACTS_DIR/host-kernel-$(date -u +%Y%m%dT%H%M%SZ)-XXXXXX")
fi
WD=$(cd "$WORK_DIR" && pwd -P)
case $WD/ in /proc/* | /sys/* | /dev/*) die "--work-dir $WD: not usable" ;; esac
mkdir -p "$WD/artifacts"

# ---- files for the guest -------------------------------------------------------------------
cp "$GUEST_SCRIPT" "$WD/scenario.sh"
{
  echo "HK_WORKDIR=$(sq "$WD")"
  echo "HK_KEEP=$(sq "$REPO_DIR"$'\n'"$CWD")"
  echo "HK_RO_OPTS=$(sq "$RO_OPTS")"
  echo "HK_RW_OPTS=$(sq "$RW_OPTS")"
  echo "HK_RW_COUNT=${#RW_REAL[@]}"
  for i in "${!RW_REAL[@]}"; do echo "HK_RW_$i=$(sq "${RW_REAL[i]}")"; done
} >"$WD/host-kernel.env"

# command.sh runs with the host's bash inside the chroot, in an empty environment.
env_vars=("PATH=$PATH" "HOME=/tmp/home" "TERM=dumb" "VHOST_TS_IN_GUEST=1"
  "VHOST_TS_GUEST_ARTIFACTS=$WD/artifacts" "VHOST_TS_GUEST_KVASER=$KVASER" "VHOST_TS_REPO=$REPO_DIR")
for v in "${PASS_ENV[@]}"; do
  [[ -z ${!v+x} ]] || env_vars+=("$v=${!v}")
done
env_vars+=("${ENV_ARGS[@]}")
{
  echo "# generated by host-kernel-run.sh; run by bash inside the guest's chroot"
  printf 'cd -- %q || exit 125\n' "$CWD"
  for e in "${env_vars[@]}"; do printf 'export %q\n' "$e"; done
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} >"$WD/command.sh"
: >"$WD/stdout.log"
: >"$WD/stderr.log"
: >"$WD/console.log"

# ---- QEMU ----------------------------------------------------------------------------------
qemu_args=(-accel tcg -cpu max -smp "$CPUS" -m "$MEM" -machine q35
  -nodefaults -no-reboot -display none -monitor none
  -serial "file:$WD/console.log"
  -kernel "$KIT_DIR/vmlinuz" -initrd "$KIT_DIR/initramfs.gz"
  -append "console=ttyS0 quiet panic=-1"
  -virtfs "local,path=$(qv "$WD"),mount_tag=kit,security_model=none"
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
for i in "${!RW_REAL[@]}"; do
  qemu_args+=(-virtfs "local,path=$(qv "${RW_REAL[i]}"),mount_tag=rw$i,security_model=none,multidevs=remap")
done
if ((KVASER > 0)); then
  qemu_args+=(-object "can-bus,id=canbus0")
  for ((i = 0; i < KVASER; i++)); do qemu_args+=(-device "kvaser_pci,canbus=canbus0"); done
fi
# The chain: this script -> timeout -> QEMU, each under pdeathsig KILL, so killing this script
# in any way (even SIGKILL) takes QEMU down with it.
argv=("$SETPRIV" --pdeathsig KILL -- timeout --kill-after=5 "$TIMEOUT"
  "$SETPRIV" --pdeathsig KILL -- "$SCRIPT_DIR/qemu.sh" "${qemu_args[@]}")
printf '%q ' "${argv[@]}" >"$WD/qemu-cmdline.txt"
echo >>"$WD/qemu-cmdline.txt"

say "booting (kvaser $KVASER, ${MEM} MiB, $CPUS vCPUs, timeout ${TIMEOUT}s); work dir $WD"
T0=$(date +%s.%N)
GUEST_PID=""
INTERRUPTED=0
# shellcheck disable=SC2317 # called from the traps below
on_signal() {
  INTERRUPTED=$1
  [[ -z $GUEST_PID ]] || kill -TERM "$GUEST_PID" 2>/dev/null || true
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP

"${argv[@]}" </dev/null >"$WD/qemu.log" 2>&1 &
GUEST_PID=$!
# Live copies of the command's output (tail ends by itself once QEMU's chain is gone).
"$SETPRIV" --pdeathsig KILL -- tail -n +1 -s 0.2 -f --pid="$GUEST_PID" "$WD/stdout.log" &
tail_out=$!
"$SETPRIV" --pdeathsig KILL -- tail -n +1 -s 0.2 -f --pid="$GUEST_PID" "$WD/stderr.log" >&2 &
tail_err=$!
tail_con=""
if ((CONSOLE)); then
  "$SETPRIV" --pdeathsig KILL -- tail -n +1 -s 0.2 -f --pid="$GUEST_PID" "$WD/console.log" >&2 &
  tail_con=$!
fi

rc=0
while :; do
  wait "$GUEST_PID" && rc=0 || rc=$?
  kill -0 "$GUEST_PID" 2>/dev/null || break
done
wait "$tail_out" "$tail_err" ${tail_con:+"$tail_con"} 2>/dev/null || true
T1=$(date +%s.%N)
wall=$(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }')

read_num() { if [[ -s $1 ]]; then tr -d '[:space:]' <"$1"; fi; }
started=$(read_num "$WD/command-started")
ended=$(read_num "$WD/command-ended")
status=$(read_num "$WD/command-status")
{
  echo "wall_seconds=$wall"
  echo "qemu_exit=$rc"
  echo "guest_uptime_at_command_start=$started"
  echo "guest_uptime_at_command_end=$ended"
  echo "command_status=$status"
} >"$WD/result.txt"

show_failure() {
  {
    [[ ! -s $WD/setup-error ]] || {
      echo "---- guest setup error ($WD/setup-error) ----"
      cat "$WD/setup-error"
    }
    echo "---- last lines of $WD/console.log ----"
    tail -n 30 "$WD/console.log"
    [[ ! -s $WD/qemu.log ]] || {
      echo "---- $WD/qemu.log ----"
      tail -n 20 "$WD/qemu.log"
    }
  } >&2
}

if ((INTERRUPTED)); then
  echo "host-kernel-run: interrupted; QEMU stopped (work dir $WD)" >&2
  exit "$INTERRUPTED"
fi
if [[ $rc == 124 && -z $status ]]; then
  echo "host-kernel-run: TIMEOUT after ${TIMEOUT}s: QEMU killed (work dir $WD)" >&2
  show_failure
  exit 124
fi
if [[ ! $status =~ ^[0-9]+$ ]]; then
  echo "host-kernel-run: the guest did not run the command (QEMU exit $rc after ${wall}s; work dir $WD)" >&2
  show_failure
  exit 125
fi
run_s=$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.1f", b - a }')
say "exit status $status; guest reached the command at ${started}s uptime, command took ${run_s}s, ${wall}s wall in all; work dir $WD"
exit "$status"
