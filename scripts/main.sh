#!/usr/bin/env bash
# All setup, then the main job on the bundled model: generate text.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
OUT=${OUT:-out}
mkdir -p "$OUT"
rgmobile info
rgmobile generate --prompt "The old man looked at the" --max-new-tokens 60 --temperature 0
