"""Held-out perplexity of the bundled model: fp32, round-to-nearest and GPTQ (docs/quantization.md).

Calibrates on the first half of ``heldout.txt`` (split at the line nearest the middle) and scores
the second half on the dequantized eager model, so no calibration token is ever scored:
teacher-forced perplexity with training/evaluate.py's protocol ([BOS] + pieces of 511 tokens from
position 0), and against the fp32 model on the same tokens the mean KL(fp32 || quantized) per
token and the top-1 agreement.

Usage: ``python scripts/measure_gptq.py [--eval-tokens N] [--quick]``
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from typing import Any

import torch
from torch.nn import functional as F

from exporter.checkpoint.loader import default_checkpoint, load_checkpoint
from exporter.model.griffin import Griffin, positions
from quantization.gptq import GptqOptions, gptq_weights
from quantization.qweights import load_dequantized, quantize_weights
from quantization.recipe import load_recipe
from rgmobile.quantize import calibration_batches
from runtime_py.tokenizer import Tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-tokens", type=int, default=None, help="score only the first N tokens of the half")
    parser.add_argument("--seq-len", type=int, default=512, help="calibration sequence length (BOS included)")
    parser.add_argument("--quick", action="store_true", help="only int4 RTN and the default GPTQ")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = default_checkpoint()
    ckpt = load_checkpoint(folder)
    text = (folder / "heldout.txt").read_text(encoding="utf-8")
    cut = text.rfind("\n", 0, len(text) // 2) + 1
    calib_text, eval_text = text[:cut], text[cut:]
    tok = Tokenizer(ckpt.tokenizer_path)
    eval_ids = tok.encode(eval_text, add_bos=False)[: args.eval_tokens]
    bos = ckpt.config.bos_id

    piece = 511
    seqs = [torch.tensor([[bos, *eval_ids[i : i + piece]]]) for i in range(0, len(eval_ids), piece)]

    @torch.no_grad()
    def logprobs(model: Griffin) -> list[torch.Tensor]:
        """Log-probabilities [t, v] of every scored position, one tensor per sequence."""
        out = []
        for ids in seqs:
            logits, _ = model(ids[:, :-1], positions(0, ids.shape[1] - 1), model.init_state(1))
            out.append(F.log_softmax(logits[0].float(), -1))
        return out

    reference = logprobs(ckpt.model.eval())
    targets = [ids[0, 1:] for ids in seqs]
    count = sum(len(t) for t in targets)

    def score(weights: dict | None) -> dict[str, Any]:
        model = copy.deepcopy(ckpt.model).eval()
        if weights is not None:
            load_dequantized(model, weights)
        kl = top1 = 0.0
        nlls = []  # summed NLL per sequence, for paired comparisons
        for la, lr, tgt in zip(logprobs(model), reference, targets, strict=True):
            nlls.append(-float(la.gather(1, tgt[:, None]).sum()))
            kl += float((lr.exp() * (lr - la)).sum())
            top1 += float((la.argmax(-1) == lr.argmax(-1)).sum())
        return {"ppl": math.exp(sum(nlls) / count), "kl": kl / count, "top1": top1 / count, "nlls": nlls}

    def versus(a: list[float], b: list[float]) -> str:
        """Paired NLL difference per token (a - b) and two standard errors over the sequences."""
        d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
        se = float(d.std()) * math.sqrt(len(d)) / count
        return f"{float(d.sum()) / count:+.4f} ± {2 * se:.4f}"

    rows: list[dict[str, Any]] = []
    rtn_nlls: dict[str, list[float]] = {}
    base = score(None)["ppl"]
    rows.append({"recipe": "fp32", "method": "-", "ppl": base, "kl": 0.0, "top1": 1.0, "seconds": 0.0})
    calib_tokens = len(tok.encode(calib_text, add_bos=False))
    print(f"calibration half: {calib_tokens} tokens; scored: {count} tokens; fp32 ppl {base:.3f}")
    settings: list[tuple[str, int, GptqOptions]] = [("int4", 8192, GptqOptions())]
    if not args.quick:
        settings += [
            ("int4", 2048, GptqOptions()),
            ("int4", 8192, GptqOptions(damp=0.1)),
            ("int4", 8192, GptqOptions(act_order=True)),
            ("int4", 8192, GptqOptions(damp=0.1, act_order=True)),
            ("int4", 8192, GptqOptions(sequential=False)),
            ("int4", calib_tokens, GptqOptions()),
            ("int8", 8192, GptqOptions()),
        ]
    for name in ["int4"] if args.quick else ["int4", "int8"]:
        t0 = time.perf_counter()
        w = quantize_weights(ckpt.model, load_recipe(name))
        secs = time.perf_counter() - t0
        rows.append({"recipe": name, "method": "rtn", **score(w), "seconds": secs})
        rtn_nlls[name] = rows[-1]["nlls"]
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "nlls"}))
    for name, tokens, opts in settings:
        batches = calibration_batches(ckpt.tokenizer_path, calib_text, args.seq_len, tokens)
        t0 = time.perf_counter()
        w = gptq_weights(ckpt.model, load_recipe(name), batches, opts)
        secs = time.perf_counter() - t0
        method = (
            f"gptq damp {opts.damp}, act_order {opts.act_order}, "
            f"{'sequential' if opts.sequential else 'one pass'}, {sum(b.shape[1] for b in batches)} tokens"
        )
        scored = score(w)
        scored["vs_rtn"] = versus(scored["nlls"], rtn_nlls[name])
        rows.append({"recipe": name, "method": method, **scored, "seconds": secs})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "nlls"}))
    for r in rows:
        print(
            f"| {r['recipe']} | {r['method']} | {r['ppl']:.3f} | {100 * (r['ppl'] / base - 1):+.2f}% | "
            f"{r['kl']:.2e} | {r['top1']:.3f} | {r.get('vs_rtn', '—')} | {r['seconds']:.1f} s |"
        )


if __name__ == "__main__":
    main()
