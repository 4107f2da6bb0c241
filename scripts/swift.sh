#!/usr/bin/env bash
# Run a command inside the Swift chroot that scripts/setup_swift.sh builds, in ios_demo/.
#
#   scripts/swift.sh swift build
#   RGMOBILE_SWIFT_BINDS="/data/bundles:/tmp/x" scripts/swift.sh swift test
#
# The repository and every folder of RGMOBILE_SWIFT_BINDS (colon-separated) are bind-mounted
# at the same absolute paths inside, so paths mean the same thing on both sides. The mounts
# live in a private mount namespace (unshare) and are also unmounted by a trap, so nothing is
# left mounted on the host whatever happens. Variables passed through: RGMOBILE_* and
# SWIFT_* (e.g. RGMOBILE_BUNDLE_FP32, RGMOBILE_ORT_LIB, RGMOBILE_UNIT_ONLY).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$("$REPO/scripts/setup_swift.sh" | tail -n1)

if [ "${RGMOBILE_SWIFT_INNER:-}" != 1 ]; then
  exec unshare --mount --propagation private env RGMOBILE_SWIFT_INNER=1 "$0" "$@"
fi

MOUNTS=()
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() {  # bind HOST_DIR [TARGET]
  local target="$ROOT${2:-$1}"
  mkdir -p "$target"
  mount --rbind "$1" "$target"
  MOUNTS+=("$target")
}
mount -t proc proc "$ROOT/proc"; MOUNTS+=("$ROOT/proc")
bind /dev
mount -t tmpfs tmpfs "$ROOT/tmp"; MOUNTS+=("$ROOT/tmp")
bind "$REPO"
IFS=: read -r -a extra <<<"${RGMOBILE_SWIFT_BINDS:-}"
for d in "${extra[@]}"; do
  [ -n "$d" ] && [ -d "$d" ] && bind "$(cd "$d" && pwd)"
done

ENVS=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)
while IFS='=' read -r name value; do
  case $name in RGMOBILE_SWIFT_INNER|RGMOBILE_SWIFT_BINDS) ;; RGMOBILE_*|SWIFT_*) ENVS+=("$name=$value") ;; esac
done < <(env)
# The newer onnxruntime (int4 artifacts) that setup_swift.sh installed, unless one is chosen.
if [ -z "${RGMOBILE_ORT_LIB:-}" ] && [ -f "$ROOT/.rgmobile-ort-node-lib" ]; then
  ENVS+=("RGMOBILE_ORT_NODE_LIB=$(cat "$ROOT/.rgmobile-ort-node-lib")")
fi
chroot "$ROOT" /usr/bin/env -i "${ENVS[@]}" sh -c 'cd "$0" && exec "$@"' "$REPO/ios_demo" "$@"
