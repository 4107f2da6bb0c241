#!/usr/bin/env bash
# The real benchmark at the true RecurrentGemma-2B shape (random weights). Run on a QUIET
# machine (nothing else running; >= 24 GB RAM). Takes 1-3 hours; everything lands in $OUT.
#
# 1. calibrate: export every target at a 2B *slice* (2B width/heads/MLP, 3 layers, 32k vocab:
#    1.26 GB of fp32 weights, ~1/8.5 of 2B) and extrapolate each export's peak RSS to 2B
#    (start + (peak - start) * 8.5). A target whose estimate is >= 20 GB is NOT exported at 2B:
#    it would break the "export peak RSS < 20 GB" goal (and likely the machine).
# 2. export the 2B artifacts that passed (export_stats in each manifest: wall time, peak RSS).
# 3. bench them all in one run with the transformers / eager / Gemma baselines.
#
# Usage: bash scripts/bench_2b.sh            (TARGETS="onnx-fp32 onnx-int4" to choose a subset)
# Smoke test of this script (minutes): SHAPE=tiny POSITIONS=0,40 STEPS=3 TARGETS=onnx-fp32 bash scripts/bench_2b.sh
set -uo pipefail  # no -e: one failing target must not stop the others
cd "$(dirname "$0")/.."
. .venv/bin/activate
OUT=${OUT:-bench-2b}
THREADS=${THREADS:-$(nproc)}
LIMIT_GB=${LIMIT_GB:-20}
SHAPE=${SHAPE:-2b}
POSITIONS=${POSITIONS:-0,2048,8192,32768}
STEPS=${STEPS:-32}
TARGETS=${TARGETS:-"onnx-fp32 onnx-int8 onnx-int4 executorch-fp32 executorch-int8 executorch-int4 coreml-fp16 coreml-int8 coreml-int4"}
mkdir -p "$OUT"

# target -> rgmobile export options. ONNX always with external data: 2B goes there anyway (> 2 GB),
# and the slice must take the same path (inline graphs cost ~5x the weights at export).
declare -A OPTS=(
  [onnx-fp32]="--format onnx --external-data always"
  [onnx-int8]="--format onnx --external-data always --quant int8"
  [onnx-int4]="--format onnx --external-data always --quant int4"
  [onnx-int4-acc0]="--format onnx --external-data always --quant int4 --accuracy-level 0"
  [executorch-fp32]="--format executorch"
  [executorch-int8]="--format executorch --quant int8"
  [executorch-int4]="--format executorch --quant int4"
  [coreml-fp16]="--format coreml --ios 18 --compute-precision fp16"
  [coreml-int8]="--format coreml --ios 18 --quant int8"
  [coreml-int4]="--format coreml --ios 18 --quant int4"
)

python - "$OUT/2b-slice.json" <<'EOF'
import json, sys
from exporter.config import preset
s = preset("2b").with_(vocab_size=32000, block_types=("recurrent", "recurrent", "attention"), name="2b-slice")
open(sys.argv[1], "w").write(json.dumps(s.to_dict()))
EOF

estimate() {  # artifact dir -> estimated $SHAPE export peak (GB), from its export_stats
  python - "$1" "$SHAPE" <<'EOF'
import json, sys
from exporter.config import GriffinConfig, preset
m = json.load(open(sys.argv[1] + "/manifest.json"))
st = m["format_details"]["export_stats"]
peak = max(st["peak_rss_bytes"], st["sampled_peak_rss_bytes"] or 0)
ratio = preset(sys.argv[2]).parameter_counts()["total"] / GriffinConfig.from_dict(m["config"]).parameter_counts()["total"]
print(f"{(st['start_rss_bytes'] + (peak - st['start_rss_bytes']) * ratio) / 1e9:.1f}")
EOF
}

ARTIFACTS=()
for t in $TARGETS; do
  echo "== $t: calibrating at the 2B slice"
  /usr/bin/time -v rgmobile -v export --random-init "$OUT/2b-slice.json" ${OPTS[$t]} --out "$OUT/slice-$t" \
    2> "$OUT/slice-$t.log" || { echo "   slice export failed (see $OUT/slice-$t.log)"; continue; }
  est=$(estimate "$OUT/slice-$t")
  echo "   estimated $SHAPE export peak: ${est} GB (limit ${LIMIT_GB} GB)"
  if python -c "import sys; sys.exit(0 if float('$est') < $LIMIT_GB else 1)"; then
    echo "== $t: exporting at $SHAPE"
    /usr/bin/time -v rgmobile -v export --random-init "$SHAPE" ${OPTS[$t]} --out "$OUT/$SHAPE-$t" \
      2> "$OUT/$SHAPE-$t.log" && ARTIFACTS+=("$OUT/$SHAPE-$t") || echo "   export failed (see $OUT/$SHAPE-$t.log)"
  else
    echo "   skipped at $SHAPE: would exceed ${LIMIT_GB} GB"
  fi
done

# Core ML artifacts cannot run off macOS: bench reports them as failed subjects but still reports
# their export peak RSS goal from the manifest. One process per artifact/baseline; the slowest
# subject (transformers fp32, ~0.3-1 tok/s) needs ~10 minutes over four positions.
rgmobile -v bench "${ARTIFACTS[@]}" --shape "$SHAPE" --positions "$POSITIONS" --threads "$THREADS" \
  --steps "$STEPS" --warmup 4 --prefill-repeats 3 --baselines transformers,eager,gemma --timeout 7200 \
  --out "$OUT/bench-$SHAPE.json" --plot "$OUT/bench-$SHAPE.png" 2> "$OUT/bench-$SHAPE.log" | tee "$OUT/bench-$SHAPE.txt"
echo "results: $OUT/bench-$SHAPE.json, $OUT/bench-$SHAPE.png, $OUT/bench-$SHAPE.txt (exit ${PIPESTATUS[0]})"
