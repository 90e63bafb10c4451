#!/usr/bin/env bash
# Fetches python-can 4.5 (Debian trixie's python3-can) into a cache directory, for the tests
# that check the socketcand server against a second python-can version beside bookworm's 4.1.
#
# It uses a private apt configuration (its own sources list, package lists and cache under the
# cache directory), so the machine's apt sources are not touched, downloads the .deb with
# `apt-get download` and unpacks it with dpkg-deb. Nothing is installed system-wide.
# Run it with /usr/bin/python3 as:  PYTHONPATH=$DIR/usr/lib/python3/dist-packages
#
# usage: python-can-trixie.sh [DIR]     (default: <repo>/.cache/python-can-4.5)
# Prints DIR on success. Idempotent: a second run with the package in place does nothing.
# GUEST_KIT_MIRROR (as for the guest kit) overrides the Debian mirror.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
DIR=${1:-$REPO_DIR/.cache/python-can-4.5}
MIRROR=${GUEST_KIT_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie
PKG=python3-can
SITE=$DIR/usr/lib/python3/dist-packages

if [[ -f $DIR/.done && -d $SITE/can ]]; then
  echo "$DIR"
  exit 0
fi
mkdir -p "$DIR/apt/lists/partial" "$DIR/apt/cache/archives/partial" "$DIR/apt/etc/preferences.d" "$DIR/debs"
cat >"$DIR/apt/etc/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main
EOF
: >"$DIR/apt/status"
APT_OPTS=(
  -o "Dir::Etc::SourceList=$DIR/apt/etc/sources.list"
  -o "Dir::Etc::SourceParts=-"
  -o "Dir::Etc::Preferences=$DIR/apt/etc/preferences"
  -o "Dir::Etc::PreferencesParts=$DIR/apt/etc/preferences.d"
  -o "Dir::State::Lists=$DIR/apt/lists"
  -o "Dir::State::Status=$DIR/apt/status"
  -o "Dir::Cache=$DIR/apt/cache"
  -o "APT::Architecture=amd64"
  -o "Debug::NoLocking=1"
  -q
)
log=$DIR/fetch.log
if ! apt-get "${APT_OPTS[@]}" update >"$log" 2>&1; then
  tail -20 "$log" >&2
  echo "python-can-trixie: apt-get update for $SUITE failed (log: $log)" >&2
  exit 1
fi
version=$(apt-cache "${APT_OPTS[@]}" show "$PKG" 2>>"$log" | sed -n 's/^Version: //p' | head -1)
if [[ -z $version ]]; then
  echo "python-can-trixie: $PKG not found in $SUITE (log: $log)" >&2
  exit 1
fi
(cd "$DIR/debs" && apt-get "${APT_OPTS[@]}" download "$PKG=$version" >>"$log" 2>&1) || {
  tail -20 "$log" >&2
  echo "python-can-trixie: apt-get download $PKG=$version failed (log: $log)" >&2
  exit 1
}
for deb in "$DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$DIR"; done
[[ -d $SITE/can ]] || {
  echo "python-can-trixie: $PKG unpacked but $SITE/can is missing" >&2
  exit 1
}
# The version the tests report, and a stamp for the next run.
echo "$version" >"$DIR/.done"
echo "$DIR"
