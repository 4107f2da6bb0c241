"""Long run: generate many tokens from one artifact with the state carried, and check nothing drifts.

    python scripts/longrun.py ARTIFACT_DIR [--tokens 100000] [--out longrun.json]

One sequence, one state, never reset: the prompt is prefilled, then ``--tokens``
tokens are sampled (seeded) and fed back one decode step at a time, at absolute
positions far past the attention window. Every step's logits must be finite.
Per block of ``--block`` tokens it records the decode rate and the process RSS;
at the end it compares the first and the last ``--edge`` tokens:

- RSS flat: last-edge mean within ``--rss-tol`` (5%) of the first-edge mean;
- tokens/s flat: last-edge rate within ``--rate-tol`` (10%) of the first-edge rate, in wall-clock
  time and in process CPU time (tokens per CPU-second: on a shared machine the wall-clock rate
  moves with the other processes' load, the CPU-time rate much less).

Writes a JSON with the blocks and the verdicts; exit 0 when every check held,
1 otherwise (2 for a user error). A benchmark, not a CI test: the rate depends
on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.errors import RgMobileError  # noqa: E402
from exporter.fsio import write_json  # noqa: E402


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; else the peak from getrusage)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(args: argparse.Namespace) -> dict:
    from runtime_py.generate import run_tokens
    from runtime_py.open import is_artifact, open_path
    from runtime_py.sampling import Sampler, SamplingConfig
    from runtime_py.tokenizer import Tokenizer

    if not is_artifact(args.artifact):
        raise RgMobileError(f"{args.artifact}: not an artifact folder (no manifest.json); export one first")
    if args.tokens < 2 * args.edge or args.edge % args.block:
        raise RgMobileError("--tokens must be >= 2 x --edge, and --edge a multiple of --block")
    opened = open_path(args.artifact, threads=args.threads)
    backend = opened.backend
    tok = Tokenizer(opened.tokenizer_path)
    sampler = Sampler(SamplingConfig(temperature=args.temperature, top_k=args.top_k, seed=args.seed))
    prompt_ids = tok.encode(args.prompt, add_bos=True)
    logits, state = run_tokens(backend, prompt_ids, backend.init_state(1))
    last = logits[-1]
    pos = len(prompt_ids)
    blocks: list[dict] = []
    nonfinite: list[int] = []
    counts = np.zeros(backend.config.vocab_size, dtype=np.int64)
    t_block, c_block = time.perf_counter(), time.process_time()
    t_start = t_block
    for i in range(args.tokens):
        token = sampler(last)
        counts[token] += 1
        out, state = backend.step(np.array([[token]], dtype=np.int64), np.array([[pos]], dtype=np.int64), state)
        last = out[0, -1]
        if not np.isfinite(last).all():
            nonfinite.append(pos)
            if len(nonfinite) >= 10:
                break
        pos += 1
        if (i + 1) % args.block == 0:
            now, cpu = time.perf_counter(), time.process_time()
            blocks.append(
                {"end_token": i + 1, "position": pos, "seconds": now - t_block, "cpu_seconds": cpu - c_block,
                 "tokens_per_s": args.block / (now - t_block), "rss_bytes": rss_bytes()}
            )  # fmt: skip
            t_block, c_block = now, cpu
            if (i + 1) % (10 * args.block) == 0:
                print(f"{i + 1} tokens, {blocks[-1]['tokens_per_s']:.0f} tok/s, "
                      f"RSS {blocks[-1]['rss_bytes'] / 2**20:.1f} MiB", file=sys.stderr, flush=True)  # fmt: skip
    total = time.perf_counter() - t_start
    per_edge = args.edge // args.block
    first, last_b = blocks[:per_edge], blocks[-per_edge:]

    def rate(bs: list[dict]) -> float:
        return sum(args.block for _ in bs) / sum(b["seconds"] for b in bs)

    def cpu_rate(bs: list[dict]) -> float:  # tokens per CPU-second: what other processes' load does not change
        return sum(args.block for _ in bs) / sum(b["cpu_seconds"] for b in bs)

    def rss(bs: list[dict]) -> float:
        return float(np.mean([b["rss_bytes"] for b in bs]))

    complete = len(blocks) * args.block == args.tokens
    rate_first, rate_last = rate(first), rate(last_b)
    rss_first, rss_last = rss(first), rss(last_b)
    checks = {
        "all_tokens_generated": complete,
        "finite_logits": not nonfinite,
        "rss_flat": abs(rss_last / rss_first - 1) <= args.rss_tol,
        "tokens_per_s_flat": abs(rate_last / rate_first - 1) <= args.rate_tol,
        "tokens_per_cpu_s_flat": abs(cpu_rate(last_b) / cpu_rate(first) - 1) <= args.rate_tol,
    }
    return {
        "artifact": str(args.artifact),
        "format": opened.kind,
        "backend": backend.name,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "prompt_tokens": len(prompt_ids),
        "generated_tokens": len(blocks) * args.block,
        "final_position": pos,
        "window": backend.config.window,
        "wall_seconds": total,
        "mean_tokens_per_s": len(blocks) * args.block / total,
        "nonfinite_positions": nonfinite,
        "distinct_tokens": int((counts > 0).sum()),
        "first": {"tokens_per_s": rate_first, "tokens_per_cpu_s": cpu_rate(first), "rss_bytes": rss_first},
        "last": {"tokens_per_s": rate_last, "tokens_per_cpu_s": cpu_rate(last_b), "rss_bytes": rss_last},
        "tokens_per_cpu_s_change": cpu_rate(last_b) / cpu_rate(first) - 1,
        "rss_change": rss_last / rss_first - 1,
        "tokens_per_s_change": rate_last / rate_first - 1,
        "checks": checks,
        "passed": all(checks.values()),
        "blocks": blocks,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", type=Path, help="exported artifact folder (onnx or executorch)")
    p.add_argument("--tokens", type=int, default=100_000)
    p.add_argument("--block", type=int, default=1000, help="tokens per measured block")
    p.add_argument("--edge", type=int, default=10_000, help="tokens compared at the start and the end")
    p.add_argument("--prompt", default="She looked at him and")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rss-tol", type=float, default=0.05)
    p.add_argument("--rate-tol", type=float, default=0.10)
    p.add_argument("--out", type=Path, default=Path("longrun.json"))
    args = p.parse_args(argv)
    try:
        result = run(args)
    except RgMobileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json(args.out, result)
    summary = {k: result[k] for k in ("generated_tokens", "final_position", "wall_seconds", "mean_tokens_per_s",
                                      "rss_change", "tokens_per_s_change", "tokens_per_cpu_s_change", "checks",
                                      "passed")}  # fmt: skip
    print(json.dumps({**summary, "first": result["first"], "last": result["last"]}, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
