"""A tiny sampling loop over the explicit-state step: prefill the prompt, then decode one token at a time.

Used to eyeball the trained model (and recorded in ``train_report.json``);
the real generation loop lives in ``runtime_py``.

Usage: ``python -m training.sample [--model DIR] [--prompt TEXT] [--tokens N]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sentencepiece as spm
import torch

from exporter.model.griffin import Griffin, positions
from runtime_py.sampling import Sampler, SamplingConfig

DEFAULT_PROMPTS = (
    "The jury said that",
    "When he came home that evening,",
    "The purpose of this study is",
)


@torch.no_grad()
def continue_text(
    model: Griffin,
    sp: spm.SentencePieceProcessor,
    prompt: str,
    max_new_tokens: int = 60,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int = 0,
) -> str:
    """The decoded continuation of ``prompt`` (BOS + prompt prefilled in one step); stops at EOS.

    Tokens come from the runtime's sampler (greedy when ``temperature`` is 0, else top-k).
    """
    sample = Sampler(SamplingConfig(temperature=temperature, top_k=top_k, seed=seed))
    ids = [model.config.bos_id, *sp.encode(prompt)]
    state = model.init_state(1)
    logits, state = model(torch.tensor([ids]), positions(0, len(ids)), state)  # [1, t, v]
    out: list[int] = []
    for i in range(max_new_tokens):
        token = sample(logits[0, -1].float().numpy())
        if token == model.config.eos_id:
            break
        out.append(token)
        logits, state = model(torch.tensor([[token]]), positions(len(ids) + i, 1), state)
    return sp.decode(out)


def main() -> None:
    from exporter.checkpoint.loader import default_checkpoint, load_checkpoint
    from training.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="HF folder (default: the bundled model)")
    parser.add_argument("--prompt", action="append", default=None, help="repeatable; default: three fixed prompts")
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.model or default_checkpoint())
    sp = load_tokenizer(ckpt.tokenizer_path)
    for prompt in args.prompt or DEFAULT_PROMPTS:
        text = continue_text(ckpt.model, sp, prompt, args.tokens, args.temperature, args.top_k, args.seed)
        print(f"{prompt}|{text}\n")


if __name__ == "__main__":
    main()
