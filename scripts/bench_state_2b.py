"""Saved states at the true 2B shape: save / restore time and file size vs re-prefilling the prompt.

Runs the PyTorch reference with random weights at the RecurrentGemma-2B shape
(``exporter.config.preset("2b")``, fp32: about 10.7 GB of weights, built one
tensor at a time by ``exporter.checkpoint.random_init``). It prefills a prompt
of ``--tokens`` random token ids (BOS first) in chunks, then measures:

- ``prefill_seconds``: running the prompt (what resuming without a state costs);
- ``identity_seconds``: hashing the weights once (the reference computes its identity
  lazily; an artifact reads it from its manifest instead);
- ``save_seconds`` / ``file_bytes``: state -> ``*.rgstate`` (atomic write);
- ``restore_seconds``: ``*.rgstate`` -> checked, converted state ready to step;
- ``max_abs_diff``: the next step's logits from the restored state vs from the live one (0.0 = exact).

Needs about 14 GB of free RAM. Usage:

    python scripts/bench_state_2b.py --tokens 2048 --chunk 128 --out /tmp/state-2b.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.artifact.identity import config_sha256  # noqa: E402
from exporter.checkpoint.random_init import parse_dtype, random_model  # noqa: E402
from exporter.config import preset  # noqa: E402
from runtime_py.generate import run_tokens  # noqa: E402
from runtime_py.identity import Identity, backend_identity  # noqa: E402
from runtime_py.state_file import SavedState, load_state, save_state  # noqa: E402
from runtime_py.torch_backend import TorchBackend  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="2b")
    ap.add_argument("--tokens", type=int, default=2048, help="prompt length to prefill")
    ap.add_argument("--chunk", type=int, default=128, help="prefill chunk (tokens per step)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", help="float32 (the reference) or bfloat16 (half the RAM)")
    ap.add_argument("--no-identity", action="store_true", help="skip hashing the weights (saves RAM and time)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    config = preset(args.preset)
    t0 = time.perf_counter()
    model = random_model(config, seed=args.seed, dtype=parse_dtype(args.dtype))
    build = time.perf_counter() - t0
    backend = TorchBackend(model, threads=args.threads, max_chunk=args.chunk)
    rng = np.random.default_rng(args.seed)
    ids = [config.bos_id, *rng.integers(3, config.vocab_size, size=args.tokens - 1).tolist()]

    t0 = time.perf_counter()
    _, state = run_tokens(backend, ids[:-1], backend.init_state(1), all_logits=False)  # last token stays unrun
    prefill = time.perf_counter() - t0
    print(f"prefill of {len(ids) - 1} tokens in chunks of {args.chunk}: {prefill:.1f}s", flush=True)

    t0 = time.perf_counter()
    if args.no_identity:  # the state file does not depend on which identity it carries
        identity = Identity(config_sha256(config), "0" * 64, "fp32")
        backend._identity = identity  # type: ignore[attr-defined]
    else:
        identity = backend_identity(backend)
    ident_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.rgstate"
        t0 = time.perf_counter()
        size = save_state(path, SavedState(tuple(ids), backend.state_arrays(state), identity), backend.io)
        save_s = time.perf_counter() - t0
        os.sync()
        t0 = time.perf_counter()
        saved = load_state(path, backend_identity(backend), backend.io)
        restored = backend.state_from_arrays(saved.arrays)
        restore_s = time.perf_counter() - t0

    step = (np.array([[ids[-1]]], np.int64), np.array([[len(ids) - 1]], np.int64))
    live, _ = backend.step(*step, state)
    again, _ = backend.step(*step, restored)
    result = {
        "preset": args.preset,
        "backend": f"torch (PyTorch reference, {args.dtype} weights, random)",
        "threads": torch.get_num_threads(),
        "prompt_tokens": len(ids),
        "prefill_chunk": args.chunk,
        "build_seconds": round(build, 1),
        "prefill_seconds": round(prefill, 2),
        "prefill_tokens_per_second": round((len(ids) - 1) / prefill, 2),
        "identity_seconds": None if args.no_identity else round(ident_s, 2),
        "save_seconds": round(save_s, 3),
        "restore_seconds": round(restore_s, 3),
        "file_bytes": size,
        "state_bytes": sum(a.nbytes for a in saved.arrays.values()),
        "max_abs_diff": float(np.abs(live - again).max()),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
