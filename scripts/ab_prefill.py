"""A/B of two artifacts' prefill and decode speed, alternating in one process.

``rgmobile bench`` measures one subject after the other, each in its own worker: on a
shared machine two subjects a few minutes apart can see different loads, which hides a
change of 15%. Here both artifacts are loaded at once and each round times one prefill
chunk and four decode steps of each, in alternating order; the first two rounds are
warm-up. Prints the medians and p10/p90, and writes every sample as JSON.

Made for comparing two exports of one model that differ in one option (e.g.
``--prefill-logits all`` against ``last``). Both must fit in memory together (2B int4:
about 6 GB). Usage:

    python scripts/ab_prefill.py out/2b-onnx-int4 out/2b-onnx-int4-last --rounds 20 --out ab.json
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
from runtime_py.backend import Backend  # noqa: E402
from runtime_py.open import open_artifact_backend  # noqa: E402

WARMUP_ROUNDS = 2
DECODE_STEPS = 4


def _round(backend: Backend, rng: np.random.Generator) -> tuple[float, float]:
    """(prefill tok/s of one chunk from the empty state, decode tok/s of the steps after it)."""
    t = max(backend.seq_lens() or (1,))
    ids = rng.integers(3, backend.config.vocab_size, size=(1, t)).astype(np.int64)
    state = backend.init_state(1)
    t0 = time.perf_counter()
    _, state = backend.step(ids, np.arange(t, dtype=np.int64)[None], state)
    prefill = t / (time.perf_counter() - t0)
    t1 = time.perf_counter()
    for i in range(DECODE_STEPS):
        _, state = backend.step(ids[:, :1], np.array([[t + i]], np.int64), state)
    return prefill, DECODE_STEPS / (time.perf_counter() - t1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path, nargs=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    backends = {}
    for path in args.artifacts:
        if path.name in backends:
            parser.error(f"two artifacts named {path.name!r}: give folders of different names")
        backends[path.name] = open_artifact_backend(path, read_manifest(path), threads=args.threads)
    rng = np.random.default_rng(0)
    samples: dict[str, dict[str, list[float]]] = {name: {"prefill": [], "decode": []} for name in backends}
    for r in range(args.rounds + WARMUP_ROUNDS):
        order = list(backends.items())
        for name, backend in order if r % 2 == 0 else order[::-1]:
            prefill, decode = _round(backend, rng)
            if r >= WARMUP_ROUNDS:
                samples[name]["prefill"].append(prefill)
                samples[name]["decode"].append(decode)
    for name, s in samples.items():
        p, d = np.array(s["prefill"]), np.array(s["decode"])
        print(
            f"{name}: prefill {np.median(p):.1f} tok/s (p10 {np.percentile(p, 10):.1f}, "
            f"p90 {np.percentile(p, 90):.1f}), decode {np.median(d):.2f} tok/s"
        )
    write_json(args.out, {"threads": args.threads, "rounds": args.rounds, "samples": samples})


if __name__ == "__main__":
    main()
