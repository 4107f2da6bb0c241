"""Held-out perplexity, computed the way the exported step model runs: chunk by chunk with state.

Protocol (recorded in ``train_report.json`` so other tools can reproduce it):
the text is tokenized without BOS, cut into pieces of ``seq_len - 1`` tokens,
and every piece is scored as ``[BOS] + piece`` from position 0. Each sequence
runs through the model in chunks of ``chunk`` tokens, the state of one chunk
fed into the next, so sequences cross the attention window (64) and the ring
buffer wraps. Perplexity = exp(mean NLL over every text token).

Usage: ``python -m training.evaluate [--model DIR] [--text FILE]``
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch
from torch.nn import functional as F

from exporter.model.griffin import Griffin, positions

log = logging.getLogger(__name__)

EVAL_SEQ_LEN = 512
EVAL_CHUNK = 128


@torch.no_grad()
def sequence_nll(model: Griffin, seqs: torch.Tensor, chunk: int = EVAL_CHUNK) -> float:
    """Summed NLL of ``seqs[:, 1:]`` given the prefixes; seqs [b, n] start with BOS at position 0."""
    b, n = seqs.shape
    state = model.init_state(b)
    total = 0.0
    for start in range(0, n - 1, chunk):
        inp = seqs[:, start : min(start + chunk, n - 1)]  # [b, t]
        tgt = seqs[:, start + 1 : start + 1 + inp.shape[1]]  # [b, t]
        logits, state = model(inp, positions(start, inp.shape[1], b), state)
        total += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum"))
    return total


@torch.no_grad()
def perplexity(
    model: Griffin,
    ids: list[int],
    bos_id: int,
    seq_len: int = EVAL_SEQ_LEN,
    chunk: int = EVAL_CHUNK,
    batch: int = 8,
    max_tokens: int | None = None,
) -> tuple[float, int]:
    """(perplexity, number of scored tokens) of the token list ``ids`` (see module docstring)."""
    ids = ids[:max_tokens] if max_tokens is not None else ids
    piece = seq_len - 1
    full = [ids[i : i + piece] for i in range(0, len(ids) - piece + 1, piece)]
    tail = ids[len(full) * piece :]
    model.eval()
    nll = 0.0
    for i in range(0, len(full), batch):
        rows = torch.tensor([[bos_id, *p] for p in full[i : i + batch]], dtype=torch.int64)  # [b, seq_len]
        nll += sequence_nll(model, rows, chunk)
    if tail:
        nll += sequence_nll(model, torch.tensor([[bos_id, *tail]], dtype=torch.int64), chunk)
    count = len(ids)
    return math.exp(nll / max(count, 1)), count


def main() -> None:
    from exporter.checkpoint.loader import default_checkpoint, load_checkpoint
    from training.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="HF folder (default: the bundled model)")
    parser.add_argument("--text", type=Path, default=None, help="text file (default: heldout.txt in the folder)")
    parser.add_argument("--seq-len", type=int, default=EVAL_SEQ_LEN)
    parser.add_argument("--chunk", type=int, default=EVAL_CHUNK)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = args.model or default_checkpoint()
    ckpt = load_checkpoint(folder)
    sp = load_tokenizer(ckpt.tokenizer_path)
    text = (args.text or folder / "heldout.txt").read_text(encoding="utf-8")
    ppl, count = perplexity(ckpt.model, sp.encode(text), ckpt.config.bos_id, args.seq_len, args.chunk)
    print(f"perplexity {ppl:.2f} over {count} tokens (seq_len {args.seq_len}, chunk {args.chunk})")


if __name__ == "__main__":
    main()
