#!/bin/bash
# Runs INSIDE the guest kit chroot (build-kit.sh copies it there with guest-init.sh as WORK/init
# and the freshly built WORK/virtio_can.ko). Stages the initramfs tree in WORK/initramfs-root
# and writes WORK/initramfs.gz (newc cpio, gzip) and WORK/initramfs-contents.txt.
#
# usage: stage-initramfs.sh KERNEL-VERSION WORK
set -euo pipefail

KVER=$1
WORK=$2
ROOT=$WORK/initramfs-root
MODDIR=/lib/modules/$KVER

# Load order matters (insmod does not resolve dependencies): 9p needs netfs and 9pnet,
# virtio_can needs can-dev, kvaser_pci needs sja1000.
REQUIRED_MODULES=(netfs 9pnet 9pnet_virtio 9p can can-raw can-dev vcan virtio_can sja1000 kvaser_pci)
OPTIONAL_MODULES=(can-bcm can-gw vxcan)
# dash is /bin/sh: Debian's busybox-static is built with FEATURE_SH_STANDALONE/PREFER_APPLETS,
# so its ash runs the busybox applet for `ip` even when iproute2's ip comes first in PATH.
REQUIRED_BINARIES=(dash cansend candump cangen canbusload ip)
OPTIONAL_BINARIES=(cansequence canplayer cangw canfdtest)

rm -rf "$ROOT"
mkdir -p "$ROOT"/{usr/bin,usr/sbin,usr/lib,usr/lib64,proc,sys,dev,run,tmp,mnt,root,etc}
# Same merged-/usr layout as Debian, so library paths printed by ldd work unchanged.
ln -s usr/bin "$ROOT/bin"
ln -s usr/sbin "$ROOT/sbin"
ln -s usr/lib "$ROOT/lib"
ln -s usr/lib64 "$ROOT/lib64"
chmod 1777 "$ROOT/tmp"
# The kernel opens /dev/console before /init runs (devtmpfs is mounted later).
mknod -m 600 "$ROOT/dev/console" c 5 1
mknod -m 666 "$ROOT/dev/null" c 1 3
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"
echo 'kit-guest' >"$ROOT/etc/hostname"

# copy_path PATH: copies the file PATH resolves to into the tree at its real path and, when
# PATH is a symlink (e.g. /lib64/ld-linux-x86-64.so.2), recreates PATH as a link to it.
copy_path() {
  local src=$1 real
  real=$(readlink -f "$src")
  if [[ ! -e $ROOT$real ]]; then
    mkdir -p "$ROOT$(dirname "$real")"
    cp -p "$real" "$ROOT$real"
  fi
  if [[ $src != "$real" && ! -e $ROOT$src && ! -L $ROOT$src ]]; then
    mkdir -p "$ROOT$(dirname "$src")"
    ln -s "$real" "$ROOT$src"
  fi
}

# copy_binary PATH: the binary plus every library (and the dynamic loader) ldd lists for it.
copy_binary() {
  local bin=$1 lib
  copy_path "$bin"
  if ldd "$bin" >/dev/null 2>&1; then
    for lib in $(ldd "$bin" | awk '/=> \//{print $3} /^\t\//{print $1}'); do
      copy_path "$lib"
    done
  fi
}

# Real binaries first (iproute2's ip must win over busybox's), busybox links afterwards.
for b in "${REQUIRED_BINARIES[@]}"; do
  p=$(command -v "$b") || {
    echo "stage-initramfs: required binary $b not found in the chroot" >&2
    exit 1
  }
  copy_binary "$p"
  echo "binary $p"
done
for b in "${OPTIONAL_BINARIES[@]}"; do
  if p=$(command -v "$b"); then
    copy_binary "$p"
    echo "binary $p"
  else
    echo "optional binary $b not available, skipped"
  fi
done

ln -s dash "$ROOT/usr/bin/sh"

BUSYBOX=$(command -v busybox)
copy_path "$BUSYBOX"
BUSYBOX=$(readlink -f "$BUSYBOX")
n=0
while read -r applet; do
  # `busybox --list-full` contains busybox itself: never link it onto itself.
  [[ $(basename "$applet") == busybox ]] && continue
  [[ -e $ROOT/$applet || -L $ROOT/$applet ]] && continue
  mkdir -p "$ROOT/$(dirname "$applet")"
  ln -s "$BUSYBOX" "$ROOT/$applet"
  n=$((n + 1))
done < <("$BUSYBOX" --list-full)
echo "busybox: $n applet links"

# Modules, decompressed (busybox insmod does not read .ko.xz), under /lib/modules/KVER/kit.
mkdir -p "$ROOT$MODDIR/kit"
: >"$ROOT/etc/kit-modules"
add_module() {
  local name=$1 required=$2 src
  if [[ $name == virtio_can ]]; then
    cp "$WORK/virtio_can.ko" "$ROOT$MODDIR/kit/virtio_can.ko"
  else
    src=$(find "$MODDIR/kernel" -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" | head -n1)
    if [[ -z $src ]]; then
      if grep -q "/$name.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; then
        echo "module $name is built into the kernel"
        return
      fi
      if [[ $required == yes ]]; then
        echo "stage-initramfs: required module $name not found under $MODDIR/kernel" >&2
        exit 1
      fi
      echo "optional module $name not available, skipped"
      return
    fi
    case $src in
    *.xz) xz -dc "$src" >"$ROOT$MODDIR/kit/$name.ko" ;;
    *.zst) zstd -dc "$src" >"$ROOT$MODDIR/kit/$name.ko" ;;
    *) cp "$src" "$ROOT$MODDIR/kit/$name.ko" ;;
    esac
  fi
  echo "$name" >>"$ROOT/etc/kit-modules"
  echo "module $name"
}
for m in "${REQUIRED_MODULES[@]}"; do add_module "$m" yes; done
for m in "${OPTIONAL_MODULES[@]}"; do add_module "$m" no; done
# modules.dep etc. so that `modprobe NAME` also works in the guest.
cp "$MODDIR"/modules.builtin* "$ROOT$MODDIR/" 2>/dev/null || true
sed 's|^|kit/|; s|$|.ko|' "$ROOT/etc/kit-modules" >"$ROOT$MODDIR/modules.order"
depmod -b "$ROOT" "$KVER" || echo "depmod failed (modprobe will not work in the guest; insmod does)"

install -m 755 "$WORK/init" "$ROOT/init"

(cd "$ROOT" && find . | LC_ALL=C sort) >"$WORK/initramfs-contents.txt"
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) |
  gzip -9 -n >"$WORK/initramfs.gz.new"
mv "$WORK/initramfs.gz.new" "$WORK/initramfs.gz"
echo "initramfs: $(stat -c %s "$WORK/initramfs.gz") bytes, $(wc -l <"$WORK/initramfs-contents.txt") entries"
