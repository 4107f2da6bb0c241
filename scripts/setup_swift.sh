#!/usr/bin/env bash
# Build (once) a Debian trixie folder with Swift 6.0 and onnxruntime for the iOS engine's Linux
# build and tests. Idempotent: a finished folder carries a stamp file and is reused.
#
#   scripts/setup_swift.sh            # prints the folder (the chroot root) on the last line
#
# Why a chroot: the machines run Debian bookworm, which has neither `swiftlang` nor
# `libonnxruntime-dev`; trixie has swiftlang 6.0.3 and onnxruntime 1.21 (C header + library).
# onnxruntime 1.21 runs the fp32 ONNX export but rejects the int4 one (its 8-bit
# GatherBlockQuantized embedding came later), so a newer libonnxruntime.so is taken from the npm
# package onnxruntime-node and installed next to it; the engine picks the library at run time
# (RGMOBILE_ORT_LIB), the C API being versioned.
#
# Environment: RGMOBILE_CACHE (default /var/cache/rgmobile), DEBIAN_MIRROR (default: the
# host's first deb.debian.org-style URI, else http://deb.debian.org/debian),
# RGMOBILE_ORT_NODE_VERSION (default 1.30.0). Needs root (debootstrap, chroot, mount).
set -euo pipefail
CACHE=${RGMOBILE_CACHE:-/var/cache/rgmobile}
ROOT=$CACHE/trixie-swift
STAMP=$ROOT/.rgmobile-swift-ready
ORT_NODE_VERSION=${RGMOBILE_ORT_NODE_VERSION:-1.30.0}
ORT_DIR=/opt/onnxruntime-node-$ORT_NODE_VERSION   # inside the chroot
PACKAGES="swiftlang libonnxruntime-dev libc6-dev libstdc++-14-dev libcurl4-openssl-dev libxml2-dev pkg-config ca-certificates"

if [ "$(id -u)" != 0 ]; then
  echo "setup_swift.sh needs root (debootstrap, chroot, mount)" >&2
  exit 2
fi

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 | awk '{print $2}') || true
  echo "${uri:-http://deb.debian.org/debian}"
}

# Run a command inside a chroot with /proc, /dev, /sys mounted; unmount on exit.
in_chroot() {
  local dir=$1; shift
  mount -t proc proc "$dir/proc"
  mount --rbind /dev "$dir/dev"; mount --make-rslave "$dir/dev"
  mount -t sysfs sysfs "$dir/sys"
  local rc=0
  chroot "$dir" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    DEBIAN_FRONTEND=noninteractive "$@" || rc=$?
  umount "$dir/sys"; umount -R "$dir/dev"; umount "$dir/proc"
  return $rc
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.trixie-swift.lock"
flock 9  # one builder at a time; the others wait and then find the stamp
if [ ! -f "$STAMP" ]; then
  start=$(date +%s)
  if ! command -v debootstrap >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  TMP=$(mktemp -d "$CACHE/trixie-swift.tmp.XXXXXX")
  cleanup() {
    for m in sys dev proc; do mountpoint -q "$TMP/$m" 2>/dev/null && umount -R "$TMP/$m"; done
    rm -rf --one-file-system "$TMP"
  }
  trap cleanup EXIT
  M=$(mirror)
  echo "setup_swift: debootstrap trixie from $M into $TMP" >&2
  debootstrap --variant=minbase trixie "$TMP" "$M" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
  echo "setup_swift: apt-get install $PACKAGES" >&2
  in_chroot "$TMP" sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null"
  in_chroot "$TMP" apt-get clean
  in_chroot "$TMP" swift --version >&2
  touch "$TMP/.rgmobile-swift-ready"
  trap - EXIT
  rm -rf --one-file-system "$ROOT"
  mv "$TMP" "$ROOT"
  echo "setup_swift: built $ROOT in $(( $(date +%s) - start )) s" >&2
fi

# The newer onnxruntime library (for the int4 artifact), from the npm registry; one folder per
# version, so changing RGMOBILE_ORT_NODE_VERSION fetches the new one into the cached folder.
if [ ! -f "$ROOT$ORT_DIR/lib/libonnxruntime.so" ]; then
  NPM_TMP=$(mktemp -d)
  trap 'rm -rf "$NPM_TMP"' EXIT
  (cd "$NPM_TMP" && npm pack --silent "onnxruntime-node@$ORT_NODE_VERSION" >/dev/null)
  tar -xzf "$NPM_TMP"/onnxruntime-node-*.tgz -C "$NPM_TMP" package/bin
  so=$(find "$NPM_TMP/package/bin" -path '*linux/x64/libonnxruntime.so*' | head -n1)
  [ -n "$so" ] || { echo "no linux-x64 libonnxruntime.so in onnxruntime-node@$ORT_NODE_VERSION" >&2; exit 1; }
  mkdir -p "$ROOT$ORT_DIR/lib"
  cp "$so" "$ROOT$ORT_DIR/lib/libonnxruntime.so.tmp"
  mv "$ROOT$ORT_DIR/lib/libonnxruntime.so.tmp" "$ROOT$ORT_DIR/lib/libonnxruntime.so"
  echo "setup_swift: onnxruntime-node $ORT_NODE_VERSION -> $ORT_DIR/lib/libonnxruntime.so" >&2
fi
echo "$ORT_DIR/lib/libonnxruntime.so" >"$ROOT/.rgmobile-ort-node-lib.tmp"
mv "$ROOT/.rgmobile-ort-node-lib.tmp" "$ROOT/.rgmobile-ort-node-lib"
echo "$ROOT"
