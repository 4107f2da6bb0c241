"""Time to first token of prompts of several lengths, with a prompt's remainder as decode steps
or through the prefill programs, alternating in one process.

A prompt runs as whole prefill chunks and then a remainder. An artifact whose prefill program runs
any t from 2 to the chunk (ONNX, manifest ``min_seq_len``) runs the remainder as one call, an
ExecuTorch export with ``--prefill-lengths`` as a few calls of those lengths; before, and for
fixed-length programs without them, it ran as decode steps. On one loaded artifact each round times both plans
for every length, alternating their order (the first round is warm-up): only the plan differs.
Prints medians and writes every sample as JSON. Usage:

    python scripts/ttft_plan.py out/2b-onnx-int4 --lengths 100,2000,2048 --rounds 3 --out ttft.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.artifact.manifest import read_manifest  # noqa: E402
from exporter.fsio import write_json  # noqa: E402
from runtime_py.backend import Backend, plan_chunks  # noqa: E402
from runtime_py.open import open_artifact_backend  # noqa: E402

WARMUP_ROUNDS = 1


def _time_plan(backend: Backend, ids: np.ndarray, plan: list[int]) -> float:
    """Seconds from the empty state to the last step's logits."""
    state, pos = backend.init_state(1), 0
    t0 = time.perf_counter()
    for n in plan:
        _, state = backend.step(ids[None, pos : pos + n], np.arange(pos, pos + n, dtype=np.int64)[None], state)
        pos += n
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--lengths", default="100,2000,2048", help="prompt lengths, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    manifest = read_manifest(args.artifact, verify=False)
    backend = open_artifact_backend(args.artifact, manifest, threads=args.threads)
    chunk = manifest.prefill_chunk
    lengths = [int(x) for x in args.lengths.split(",")]
    plans = {
        "remainder as decode steps": lambda n: plan_chunks(n, (chunk, 1)),
        "remainder through the prefill programs": lambda n: plan_chunks(n, backend.seq_lens()),
    }
    ids = np.random.default_rng(0).integers(3, manifest.config.vocab_size, max(lengths)).astype(np.int64)
    samples: dict[str, dict[str, list[float]]] = {str(n): {p: [] for p in plans} for n in lengths}
    for r in range(args.rounds + WARMUP_ROUNDS):
        order = list(plans.items())
        for name, plan in order if r % 2 == 0 else order[::-1]:
            for n in lengths:
                seconds = _time_plan(backend, ids[:n], plan(n))
                if r >= WARMUP_ROUNDS:
                    samples[str(n)][name].append(seconds)
    rows = []
    for n in lengths:
        for name, plan in plans.items():
            s = samples[str(n)][name]
            steps = plan(n)
            rows.append({"tokens": n, "plan": name, "steps": len(steps), "longest_steps": sorted(steps)[-2:],
                         "tail_calls": [t for t in steps if 1 < t < chunk],
                         "median_seconds": float(np.median(s)), "seconds": s})  # fmt: skip
            runs = ", ".join(f"{x:.2f}" for x in s)
            print(f"{n} tokens, {name} ({len(steps)} calls): {np.median(s):.2f} s (runs {runs})")
    write_json(args.out, {"artifact": args.artifact.name, "threads": args.threads, "rounds": args.rounds,
                          "prefill_chunk": chunk, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
