#!/usr/bin/env bash
# Installs the Debian packages the test suites use as real peers and readers:
#   python3-can   python-can (socketcand client, log/ASC/BLF readers), run with /usr/bin/python3
#   tshark        pcapng decoding
#   can-utils     log2asc, canplayer, cangen, candump
#   chromium      the web monitor's page tests (driven by playwright-core)
#   iproute2      network namespaces and veth pairs for multi-host tests
#   socat         console tests
#   util-linux    prlimit, setpriv (--realtime refused without CAP_SYS_NICE); chrt
# Idempotent: packages already present are not touched; nothing happens when all are there.
# Needs root (it is what CI runs as) to install; otherwise it says what is missing and exits 0,
# and the tests that need a missing package skip with the reason (CI=true makes them fail instead).
set -euo pipefail
PACKAGES=(python3-can tshark can-utils chromium iproute2 socat util-linux)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "host-packages: missing ${missing[*]} (run as root: bash scripts/deps/host-packages.sh); tests that need them will skip" >&2
  exit 0
fi
echo "host-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false -q "$@"; }
if ! apt_get install -y "${missing[@]}" >/tmp/host-packages.log 2>&1; then
  apt_get update >>/tmp/host-packages.log 2>&1 || true
  apt_get install -y "${missing[@]}" >>/tmp/host-packages.log 2>&1 || {
    tail -20 /tmp/host-packages.log >&2
    echo "host-packages: apt-get install failed (log: /tmp/host-packages.log)" >&2
    exit 1
  }
fi
