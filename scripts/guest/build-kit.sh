#!/usr/bin/env bash
# Builds (and caches) the guest kit used by the end-to-end tests: an unmodified Debian
# trixie-backports Linux 7.x kernel, an initramfs with busybox, can-utils and the mainline
# virtio_can driver (built out of tree, because Debian leaves CONFIG_CAN_VIRTIO_CAN unset),
# and QEMU 11 (for vhost-user-test-device-pci) taken from a Debian trixie chroot.
# Facts this relies on: docs/testing.md "Real guests"; layout and steps: scripts/guest/README.md.
#
# usage: build-kit.sh [--force | --from STEP] [--help]
#   GUEST_KIT_DIR     output directory (default: <repo>/.guest-kit)
#   GUEST_KIT_MIRROR  Debian mirror (default: http://deb.debian.org/debian)
#
# Every step is skipped when its outputs exist and its stamp (a hash of the step's inputs and
# of the step's own code) is unchanged, so a second run takes seconds.
set -euo pipefail
shopt -s inherit_errexit

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
KIT_DIR=${GUEST_KIT_DIR:-$REPO_DIR/.guest-kit}
MIRROR=${GUEST_KIT_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie
ROOTFS=$KIT_DIR/rootfs
STAMPS=$KIT_DIR/stamps
LOGS=$KIT_DIR/logs
# Scratch space inside the chroot (the module build and initramfs staging run there so that
# gcc, ldd and the kernel build tree are the chroot's own).
CHROOT_WORK=/var/tmp/guest-kit
STEPS=(debootstrap packages module initramfs install)

# Packages installed in the chroot from trixie-backports. iproute2 is here because busybox's
# `ip` cannot configure CAN links (`ip link set can0 type can bitrate ...`).
CHROOT_PACKAGES=(qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static can-utils
  iproute2 gcc make xz-utils kmod cpio)
HOST_PACKAGES=(debootstrap can-utils)

usage() {
  sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  echo "steps: ${STEPS[*]}"
}

FORCE_FROM=""
while (($# > 0)); do
  case $1 in
  --force) FORCE_FROM=${STEPS[0]} ;;
  --from)
    [[ $# -ge 2 ]] || {
      usage >&2
      exit 2
    }
    FORCE_FROM=$2
    shift
    ;;
  --from=*) FORCE_FROM=${1#--from=} ;;
  -h | --help)
    usage
    exit 0
    ;;
  *)
    echo "build-kit: unknown argument: $1" >&2
    usage >&2
    exit 2
    ;;
  esac
  shift
done
if [[ -n $FORCE_FROM && " ${STEPS[*]} " != *" $FORCE_FROM "* ]]; then
  echo "build-kit: unknown step '$FORCE_FROM' (steps: ${STEPS[*]})" >&2
  exit 2
fi

if [[ $(id -u) -ne 0 ]]; then
  cat >&2 <<EOF
build-kit: must run as root. It needs root to:
  - install host packages with apt (${HOST_PACKAGES[*]}),
  - debootstrap a Debian $SUITE chroot into $ROOTFS and install packages in it
    (chroot, mount proc and bind /dev),
  - create device nodes for the initramfs.
Run: sudo $0 $*
EOF
  exit 2
fi

mkdir -p "$KIT_DIR" "$STAMPS" "$LOGS"
exec 9>"$KIT_DIR/.lock"
flock -n 9 || {
  echo "build-kit: another build is running on $KIT_DIR (waiting)" >&2
  flock 9
}

# ---------------------------------------------------------------------------------------------
# Progress, errors, logs

CURRENT_STEP="setup"
STEP_HINT=""
# The terminal's stderr, kept for trap messages: a trap can run while a step's command still
# has its output redirected into the step log.
exec 8>&2
STEP_LOG=""
T0=$SECONDS

say() { echo "build-kit: $*"; }

on_error() {
  local rc=$1 where="line $2" i
  # set -E makes subshells ($(...)) inherit the trap: report once, from the main shell.
  [[ $BASHPID == "$$" ]] || return 0
  trap - ERR
  # Call chain of the failing command, innermost first: "logged:119 <- step_module:372".
  for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do where+=" <- ${FUNCNAME[i]}:${BASH_LINENO[i]}"; done
  echo >&8
  echo "build-kit: FAILED in step '$CURRENT_STEP' (exit $rc; build-kit.sh $where)" >&8
  if [[ -n $STEP_LOG && -s $STEP_LOG ]]; then
    echo "---- last lines of $STEP_LOG ----" >&8
    tail -n 40 "$STEP_LOG" >&8
    echo "---- full log: $STEP_LOG ----" >&8
  fi
  [[ -z $STEP_HINT ]] || echo "build-kit: hint: $STEP_HINT" >&8
  echo "build-kit: fix the cause and re-run; finished steps are kept (use --from $CURRENT_STEP to redo this one)." >&8
}
set -E
trap 'on_error $? $LINENO' ERR

# Runs a command with its output appended to the current step's log.
logged() {
  echo "+ $*" >>"$STEP_LOG"
  "$@" >>"$STEP_LOG" 2>&1
}

begin_step() {
  CURRENT_STEP=$1
  STEP_HINT=$2
  STEP_LOG=$LOGS/$1.log
  : >"$STEP_LOG"
}

# A stamp records the key (hash of inputs + step code) a step's outputs were built from.
key_of() { printf '%s\n' "$@" | sha256sum | cut -c1-32; }
fn_hash() { declare -f "$1" | sha256sum | cut -c1-16; }
file_hash() { sha256sum "$1" | cut -c1-16; }

# is_forced STEP: true when --force/--from selects STEP (or an earlier step).
is_forced() {
  [[ -n $FORCE_FROM ]] || return 1
  local s
  for s in "${STEPS[@]}"; do
    [[ $s == "$FORCE_FROM" ]] && return 0
    [[ $s == "$1" ]] && return 1
  done
  return 1
}

# up_to_date STEP KEY OUTPUT...: stamp matches and all outputs exist.
up_to_date() {
  local step=$1 key=$2
  shift 2
  is_forced "$step" && return 1
  [[ -f $STAMPS/$step && $(<"$STAMPS/$step") == "$key" ]] || return 1
  local out
  for out in "$@"; do [[ -e $out ]] || return 1; done
  return 0
}
mark_done() { printf '%s\n' "$2" >"$STAMPS/$1"; }
skip() { say "[$1] up to date"; }

# ---------------------------------------------------------------------------------------------
# Chroot mounts: mounted on demand, ALWAYS unmounted on exit (success, failure or signal).

MOUNTED=()
chroot_mount() {
  if ! mountpoint -q "$ROOTFS/proc"; then
    mount -t proc proc "$ROOTFS/proc"
    MOUNTED+=("$ROOTFS/proc")
  fi
  if ! mountpoint -q "$ROOTFS/dev"; then
    mount --bind /dev "$ROOTFS/dev"
    MOUNTED+=("$ROOTFS/dev")
  fi
}
cleanup() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" || true
  done
  MOUNTED=()
}
trap cleanup EXIT
interrupted() {
  trap - ERR
  echo "build-kit: interrupted in step '$CURRENT_STEP' ($1); chroot mounts are released, re-run to continue" >&8
  exit "$2"
}
trap 'interrupted SIGINT 130' INT
trap 'interrupted SIGTERM 143' TERM

# Unmounts anything left mounted below $1 (e.g. by an interrupted debootstrap), deepest first.
umount_below() {
  local m
  findmnt -rn -o TARGET | awk -v p="$1/" 'index($0 "/", p) == 1' | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

# Removes a directory tree that may have been a chroot, never crossing into a (bind) mount.
remove_tree() {
  [[ -e $1 ]] || return 0
  umount_below "$1"
  rm -rf --one-file-system "$1"
}

in_chroot() {
  chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C \
    DEBIAN_FRONTEND=noninteractive INITRD=No "$@"
}

# ---------------------------------------------------------------------------------------------
# Step 0: host prerequisites (checked every run; cheap)

step_host() {
  begin_step host "check apt on the host: apt-get update / apt-get install ${HOST_PACKAGES[*]}"
  local missing=() p
  for p in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    say "[host] prerequisites present (${HOST_PACKAGES[*]})"
    return
  fi
  say "[host] installing ${missing[*]} (log: $STEP_LOG)"
  if ! logged env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; then
    logged apt-get update || true # a dead third-party source must not stop us
    logged env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
}

# ---------------------------------------------------------------------------------------------
# Step 1: debootstrap (a Debian trixie minbase chroot)

step_debootstrap() {
  begin_step debootstrap "debootstrap output in the log; the mirror ($MIRROR) must be reachable"
  local key
  key=$(key_of "$SUITE" "$MIRROR" minbase "$(fn_hash step_debootstrap)")
  if up_to_date debootstrap "$key" "$ROOTFS/usr/bin/apt-get" "$ROOTFS/etc/debian_version"; then
    skip debootstrap
    return
  fi
  say "[debootstrap] debootstrap --variant=minbase $SUITE (about 2 minutes; log: $STEP_LOG)"
  # Everything downstream depends on the chroot: invalidate it before touching it.
  rm -f "$STAMPS"/*
  local partial=$KIT_DIR/rootfs.partial
  remove_tree "$partial"
  remove_tree "$ROOTFS"
  logged debootstrap --variant=minbase "$SUITE" "$partial" "$MIRROR"
  umount_below "$partial"
  mv "$partial" "$ROOTFS"
  mark_done debootstrap "$key"
}

# ---------------------------------------------------------------------------------------------
# Step 2: packages in the chroot (QEMU 11, Linux 7.x + headers + source, busybox, can-utils...)

# Kernel version (uname -r) of the chroot's linux-image-amd64.
chroot_kver() {
  local dep
  # shellcheck disable=SC2016 # dpkg-query format, not a shell expansion
  dep=$(in_chroot dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null | grep -o 'linux-image-[^ ,]*' | head -n1) || true
  dep=${dep#linux-image-}
  if [[ -z $dep || ! -d $ROOTFS/lib/modules/$dep ]]; then
    dep=$(find "$ROOTFS/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
  fi
  [[ -n $dep ]] || return 1
  printf '%s\n' "$dep"
}
# shellcheck disable=SC2016 # dpkg-query format
pkg_version() { in_chroot dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }

step_packages() {
  begin_step packages "apt output in the log; check that $MIRROR serves $SUITE and $SUITE-backports"
  local key
  key=$(key_of "$(<"$STAMPS/debootstrap")" "${CHROOT_PACKAGES[*]}" "$(fn_hash step_packages)")
  if up_to_date packages "$key" "$ROOTFS/usr/bin/qemu-system-x86_64" "$ROOTFS/usr/bin/busybox" \
    "$ROOTFS/usr/bin/candump"; then
    skip packages
    return
  fi
  say "[packages] apt-get install -t $SUITE-backports ${CHROOT_PACKAGES[*]} (a few minutes; log: $STEP_LOG)"
  rm -f "$STAMPS/module" "$STAMPS/initramfs" "$STAMPS/install"
  cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-backports main
EOF
  cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  # Never start services inside the chroot.
  printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
  chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
  chroot_mount
  logged in_chroot apt-get update
  logged in_chroot apt-get install -y -t "$SUITE-backports" --no-install-recommends "${CHROOT_PACKAGES[@]}"

  local kver xy
  kver=$(chroot_kver) || {
    STEP_HINT="no kernel found under $ROOTFS/lib/modules after installing linux-image-amd64"
    false
  }
  xy=$(echo "$kver" | grep -oE '^[0-9]+\.[0-9]+')
  say "[packages] kernel $kver: installing linux-source-$xy"
  STEP_HINT="linux-source-$xy must exist in $SUITE-backports (apt-cache policy linux-source-$xy in the chroot)"
  logged in_chroot apt-get install -y -t "$SUITE-backports" --no-install-recommends "linux-source-$xy"
  logged in_chroot apt-get clean

  local iv sv
  iv=$(pkg_version "linux-image-$kver") || iv="?"
  sv=$(pkg_version "linux-source-$xy") || sv="?"
  [[ $iv == "$sv" ]] || say "[packages] WARNING: linux-image-$kver is $iv but linux-source-$xy is $sv"
  [[ -d $ROOTFS/lib/modules/$kver/build ]] || {
    STEP_HINT="linux-headers-$kver is not installed (the headers must come from $SUITE-backports too)"
    false
  }
  mark_done packages "$key"
}

# ---------------------------------------------------------------------------------------------
# QEMU check (every run; a second): the chroot's qemu-system-x86_64 runs on the host through the
# chroot's dynamic loader (see qemu.sh) and knows vhost-user-test-device-pci (QEMU >= 10.2).

QEMU_VERSION=""
check_qemu() {
  begin_step qemu-check "run: GUEST_KIT_DIR=$KIT_DIR $SCRIPT_DIR/qemu.sh -version"
  local libdirs=$KIT_DIR/qemu-libdirs
  # Library directories of every object QEMU links against, as the chroot's ldd resolves them.
  in_chroot ldd /usr/bin/qemu-system-x86_64 | awk '/=> \//{print $3} /^\t\//{print $1}' |
    xargs -n1 dirname | sort -u >"$libdirs.new"
  mv "$libdirs.new" "$libdirs"
  QEMU_VERSION=$(GUEST_KIT_DIR=$KIT_DIR "$SCRIPT_DIR/qemu.sh" -version 2>>"$STEP_LOG" | head -n1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)
  GUEST_KIT_DIR=$KIT_DIR "$SCRIPT_DIR/qemu.sh" -device help >"$LOGS/qemu-devices.txt" 2>>"$STEP_LOG"
  if ! grep -q '"vhost-user-test-device-pci"' "$LOGS/qemu-devices.txt"; then
    STEP_HINT="QEMU $QEMU_VERSION lacks vhost-user-test-device-pci (needs >= 10.2); list in $LOGS/qemu-devices.txt"
    false
  fi
  say "[qemu] QEMU $QEMU_VERSION runs on the host and has vhost-user-test-device-pci"
}

# ---------------------------------------------------------------------------------------------
# Step 3: virtio_can.ko, built out of tree from linux-source against the chroot's headers

step_module() {
  local kver xy
  kver=$(chroot_kver)
  xy=$(echo "$kver" | grep -oE '^[0-9]+\.[0-9]+')
  begin_step module "the module build runs in the chroot: make -C /lib/modules/$kver/build M=$CHROOT_WORK/virtio_can"
  local key out=$KIT_DIR/virtio_can.ko
  key=$(key_of "$kver" "$(pkg_version "linux-source-$xy")" "$(pkg_version "linux-headers-$kver")" \
    "$(pkg_version gcc)" "$(fn_hash step_module)")
  if up_to_date module "$key" "$out"; then
    skip module
    return
  fi
  say "[module] building virtio_can.ko for $kver from linux-source-$xy (log: $STEP_LOG)"
  local dir=$ROOTFS$CHROOT_WORK/virtio_can tarball=$ROOTFS/usr/src/linux-source-$xy.tar.xz
  [[ -f $tarball ]] || {
    STEP_HINT="expected $tarball (package linux-source-$xy)"
    false
  }
  rm -rf "$dir"
  mkdir -p "$dir/src" "$dir/include/linux"
  STEP_HINT="$tarball must contain drivers/net/can/virtio_can.c and include/uapi/linux/virtio_can.h (mainline >= 7.0)"
  logged tar -xJf "$tarball" -C "$dir/src" --wildcards '*/drivers/net/can/virtio_can.c' \
    '*/include/uapi/linux/virtio_can.h'
  find "$dir/src" -name virtio_can.c -exec cp {} "$dir/virtio_can.c" \;
  find "$dir/src" -name virtio_can.h -exec cp {} "$dir/include/linux/virtio_can.h" \;
  rm -rf "$dir/src"
  # The uapi header is not part of Debian's linux-headers package: ship it beside the source.
  # shellcheck disable=SC2016 # $(src) is a make variable
  printf 'obj-m := virtio_can.o\nccflags-y := -I$(src)/include\n' >"$dir/Kbuild"
  STEP_HINT="compiler errors in the log; the headers (linux-headers-$kver) and gcc in the chroot must match the kernel"
  chroot_mount
  logged in_chroot make -C "/lib/modules/$kver/build" "M=$CHROOT_WORK/virtio_can" modules
  local vermagic
  vermagic=$(in_chroot modinfo -F vermagic "$CHROOT_WORK/virtio_can/virtio_can.ko")
  [[ $vermagic == "$kver "* ]] || {
    STEP_HINT="virtio_can.ko vermagic '$vermagic' does not match kernel $kver"
    false
  }
  # Debian's own modules ship without debug info; keep the initramfs small the same way.
  logged in_chroot strip --strip-debug "$CHROOT_WORK/virtio_can/virtio_can.ko"
  cp "$dir/virtio_can.ko" "$out.new"
  mv "$out.new" "$out"
  mark_done module "$key"
}

# ---------------------------------------------------------------------------------------------
# Step 4: initramfs (staged inside the chroot by stage-initramfs.sh; /init is guest-init.sh)

step_initramfs() {
  local kver
  kver=$(chroot_kver)
  begin_step initramfs "staging runs in the chroot: $SCRIPT_DIR/stage-initramfs.sh; the tree is kept in $ROOTFS$CHROOT_WORK/initramfs-root"
  local key out=$KIT_DIR/initramfs.gz
  key=$(key_of "$kver" "$(file_hash "$KIT_DIR/virtio_can.ko")" "$(file_hash "$SCRIPT_DIR/stage-initramfs.sh")" \
    "$(file_hash "$SCRIPT_DIR/guest-init.sh")" "$(pkg_version busybox-static)" "$(pkg_version can-utils)" \
    "$(pkg_version iproute2)" "$(pkg_version "linux-image-$kver")" "$(fn_hash step_initramfs)")
  if up_to_date initramfs "$key" "$out"; then
    skip initramfs
    return
  fi
  say "[initramfs] staging busybox, can-utils, iproute2, modules and /init (log: $STEP_LOG)"
  mkdir -p "$ROOTFS$CHROOT_WORK"
  cp "$SCRIPT_DIR/stage-initramfs.sh" "$ROOTFS$CHROOT_WORK/stage-initramfs.sh"
  cp "$SCRIPT_DIR/guest-init.sh" "$ROOTFS$CHROOT_WORK/init"
  cp "$KIT_DIR/virtio_can.ko" "$ROOTFS$CHROOT_WORK/virtio_can.ko"
  chroot_mount
  logged in_chroot /bin/bash "$CHROOT_WORK/stage-initramfs.sh" "$kver" "$CHROOT_WORK"
  cp "$ROOTFS$CHROOT_WORK/initramfs.gz" "$out.new"
  mv "$out.new" "$out"
  cp "$ROOTFS$CHROOT_WORK/initramfs-contents.txt" "$KIT_DIR/initramfs-contents.txt"
  mark_done initramfs "$key"
}

# ---------------------------------------------------------------------------------------------
# Step 5: kernel + manifest into the kit directory

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

step_install() {
  local kver
  kver=$(chroot_kver)
  begin_step install "expected $ROOTFS/boot/vmlinuz-$kver"
  local key
  key=$(key_of "$kver" "$QEMU_VERSION" "$(file_hash "$ROOTFS/boot/vmlinuz-$kver")" \
    "$(file_hash "$KIT_DIR/initramfs.gz")" "$(file_hash "$KIT_DIR/qemu-libdirs")" "$(fn_hash step_install)")
  if up_to_date install "$key" "$KIT_DIR/vmlinuz" "$KIT_DIR/manifest.json"; then
    skip install
    return
  fi
  say "[install] vmlinuz, manifest.json -> $KIT_DIR"
  cp "$ROOTFS/boot/vmlinuz-$kver" "$KIT_DIR/vmlinuz.new"
  mv "$KIT_DIR/vmlinuz.new" "$KIT_DIR/vmlinuz"
  local libdirs="" d
  while read -r d; do libdirs+="${libdirs:+, }$(json_str "$d")"; done <"$KIT_DIR/qemu-libdirs"
  cat >"$KIT_DIR/manifest.json.new" <<EOF
{
  "kernelVersion": $(json_str "$kver"),
  "kernelPackageVersion": $(json_str "$(pkg_version "linux-image-$kver")"),
  "qemuVersion": $(json_str "$QEMU_VERSION"),
  "qemuPackageVersion": $(json_str "$(pkg_version qemu-system-x86)"),
  "buildDate": $(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),
  "suite": $(json_str "$SUITE-backports"),
  "kernel": "vmlinuz",
  "initrd": "initramfs.gz",
  "rootfs": "rootfs",
  "qemuBinary": "/usr/bin/qemu-system-x86_64",
  "qemuLoader": "/usr/lib64/ld-linux-x86-64.so.2",
  "qemuLibraryDirs": [$libdirs],
  "qemuModuleDir": "/usr/lib/x86_64-linux-gnu/qemu",
  "qemuFirmwareDirs": ["/usr/share/qemu", "/usr/share/seabios"],
  "shareTag": "kit"
}
EOF
  mv "$KIT_DIR/manifest.json.new" "$KIT_DIR/manifest.json"
  mark_done install "$key"
}

# ---------------------------------------------------------------------------------------------

step_host
step_debootstrap
step_packages
check_qemu
step_module
step_initramfs
step_install
CURRENT_STEP="done"
say "kit ready in $KIT_DIR ($((SECONDS - T0))s): kernel $(chroot_kver), QEMU $QEMU_VERSION"
