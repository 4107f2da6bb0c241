"""Train the bundled English model: ``python -m training.train --out exporter/bundled/brown-small``.

Brown Corpus (training/corpus.py) -> SentencePiece BPE (training/tokenizer.py)
-> ``preset("small")`` Griffin trained from scratch with AdamW, linear warmup
and a cosine decay, on one CPU thread within a wall-clock budget. Every
training row is ``[BOS] + seq_len tokens`` run from a fresh state at position
0; half of the rows start at a paragraph, half anywhere. The matmuls run under
bfloat16 autocast (about 2x faster on CPU) with fp32 master weights.

The learning-rate schedule follows the clock (progress = elapsed / budget), so
the decay ends on time on a busy, shared machine; ``--steps N`` switches to a
step-based schedule for a bit-exact rerun (same seed, same N).

Output (written atomically): the HF folder (config.json, model.safetensors in
bfloat16, tokenizer.model), ``heldout.txt`` and ``train_report.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from exporter.checkpoint.save import save_hf_folder
from exporter.config import GriffinConfig, preset
from exporter.fsio import atomic_dir, write_json
from exporter.model.griffin import Griffin, positions, random_init_
from training import corpus as brown
from training.evaluate import EVAL_CHUNK, EVAL_SEQ_LEN, perplexity
from training.sample import DEFAULT_PROMPTS, continue_text
from training.tokenizer import load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

SHIP_DTYPE = torch.bfloat16  # 5.9M parameters: ~11.7 MB on disk


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults produced the bundled model.

    Fields:
      minutes: wall-clock budget of the optimisation loop (evaluation and saving come on top).
      steps: if set, a step-based schedule of exactly this many steps (ignores ``minutes``).
      seed: seeds the init, the batch sampler and the samples.
      batch, seq_len: rows per step and tokens per row after BOS (seq_len > window 64).
      lr, min_lr_ratio, warmup_steps: AdamW peak rate, cosine floor (fraction of peak), warmup.
      weight_decay, grad_clip: decoupled decay on matrices only; global gradient-norm clip.
      autocast_bf16: bfloat16 autocast for the forward pass.
      eval_every: steps between quick held-out losses (first 8k held-out tokens).
      log_every: steps between progress lines.
    """

    minutes: float = 35.0
    steps: int | None = None
    seed: int = 0
    batch: int = 8
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    autocast_bf16: bool = True
    eval_every: int = 250
    log_every: int = 25


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from ``lr`` to ``lr * min_lr_ratio`` over progress 0..1."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


class Batches:
    """Random training rows ``[BOS] + seq_len tokens`` from one token stream (deterministic per seed)."""

    def __init__(self, ids: np.ndarray, newline_id: int, bos_id: int, seq_len: int, seed: int) -> None:
        self.ids = torch.from_numpy(ids.astype(np.int64))
        self.bos_id, self.seq_len = bos_id, seq_len
        last = len(ids) - seq_len
        # Paragraph starts: the token after a blank line ("\n\n" is two byte tokens).
        para = np.flatnonzero((ids[:-2] == newline_id) & (ids[1:-1] == newline_id)) + 2
        self.paragraph_starts = torch.from_numpy(np.concatenate([[0], para[para <= last]]).astype(np.int64))
        self.last = last
        self.gen = torch.Generator().manual_seed(seed)

    def next(self, batch: int) -> torch.Tensor:
        """[b, seq_len + 1] int64: BOS then seq_len consecutive training tokens."""
        at_paragraph = torch.rand(batch, generator=self.gen) < 0.5
        para = self.paragraph_starts[torch.randint(len(self.paragraph_starts), (batch,), generator=self.gen)]
        anywhere = torch.randint(self.last + 1, (batch,), generator=self.gen)
        starts = torch.where(at_paragraph, para, anywhere)
        rows = self.ids[starts.unsqueeze(1) + torch.arange(self.seq_len)]  # [b, seq_len]
        return torch.cat([torch.full((batch, 1), self.bos_id, dtype=torch.int64), rows], dim=1)


def make_optimizer(model: Griffin, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (incl. the tied embedding), none on biases/norms/a_param."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def train_loss(model: Griffin, rows: torch.Tensor, autocast: bool) -> torch.Tensor:
    """Mean next-token cross-entropy of rows [b, n] (BOS first) from a fresh state at position 0."""
    b, n = rows.shape
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, _ = model(rows[:, :-1], positions(0, n - 1, b), model.init_state(b))  # [b, n-1, v]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))


def optimise(model: Griffin, batches: Batches, heldout_ids: list[int], bos_id: int, cfg: TrainConfig) -> dict[str, Any]:
    """The training loop; returns steps, tokens seen, minutes and the final train loss."""
    opt = make_optimizer(model, cfg)
    budget = cfg.minutes * 60.0
    t0 = time.perf_counter()
    window_loss: list[float] = []
    recent: list[float] = []
    step = 0
    last_log = t0
    tokens = 0
    while True:
        elapsed = time.perf_counter() - t0
        progress = step / cfg.steps if cfg.steps else elapsed / budget
        if progress >= 1.0:
            break
        lr = lr_at(cfg, step, progress)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss = train_loss(model, batches.next(cfg.batch), cfg.autocast_bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        tokens += cfg.batch * cfg.seq_len
        value = loss.item()
        window_loss.append(value)
        recent = (recent + [value])[-50:]
        if step % cfg.log_every == 0:
            now = time.perf_counter()
            rate = cfg.log_every * cfg.batch * cfg.seq_len / (now - last_log)
            log.info(
                "step %5d  loss %.3f  lr %.2e  %5.0f tok/s  %.1f min  %.1fM tokens",
                step, sum(window_loss) / len(window_loss), lr, rate, (now - t0) / 60, tokens / 1e6,
            )  # fmt: skip
            window_loss, last_log = [], now
        if step % cfg.eval_every == 0:
            ppl, _ = perplexity(model, heldout_ids, bos_id, seq_len=256, max_tokens=8192)
            log.info("step %5d  held-out (8k tokens) loss %.3f  ppl %.1f", step, math.log(ppl), ppl)
            last_log = time.perf_counter()
    minutes = (time.perf_counter() - t0) / 60
    return {"steps": step, "tokens_seen": tokens, "minutes": round(minutes, 2), "final_train_loss": np.mean(recent)}


def shipped_weights(model: Griffin, dtype: torch.dtype) -> Griffin:
    """A copy of ``model`` whose weights went through ``dtype`` and back: what the folder holds."""
    clone = Griffin(model.config)
    clone.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    return clone.eval()


def run(out_dir: Path, cfg: TrainConfig, config: GriffinConfig | None = None) -> dict[str, Any]:
    """Corpus -> tokenizer -> training -> evaluation -> the bundled folder. Returns the report."""
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    config = config or preset("small")
    data = brown.load_brown()
    heldout_text = brown.heldout_sample(data)
    with tempfile.TemporaryDirectory(prefix="rg-train-") as work:
        tok_path = train_tokenizer(data.train_text, Path(work) / "tokenizer.model", config.vocab_size)
        sp = load_tokenizer(tok_path)
        train_ids = np.asarray(sp.encode(data.train_text), dtype=np.int32)
        heldout_ids = sp.encode(heldout_text)
        log.info("tokens: %d train, %d held-out (heldout.txt)", len(train_ids), len(heldout_ids))
        batches = Batches(train_ids, sp.piece_to_id("<0x0A>"), config.bos_id, cfg.seq_len, cfg.seed)

        model = random_init_(Griffin(config), seed=cfg.seed, nonzero_biases=False)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model %s: %d parameters; %s", config.name, n_params, cfg)
        stats = optimise(model, batches, heldout_ids, config.bos_id, cfg)
        model.eval()

        ppl_fp32, _ = perplexity(model, heldout_ids, config.bos_id)
        shipped = shipped_weights(model, SHIP_DTYPE)
        ppl, count = perplexity(shipped, heldout_ids, config.bos_id)
        log.info("held-out perplexity %.2f (shipped %s weights), %.2f (fp32 weights)", ppl, SHIP_DTYPE, ppl_fp32)
        samples = {
            p: continue_text(shipped, sp, p, max_new_tokens=60, temperature=0.8, top_k=40, seed=cfg.seed)
            for p in DEFAULT_PROMPTS
        }
        for prompt, text in samples.items():
            log.info("sample: %s|%s", prompt, text)

        report: dict[str, Any] = {
            "corpus": {
                "name": "Brown Corpus (Form C, tags stripped, detokenized)",
                "source": brown.SOURCE,
                "heldout_rule": f"every {brown.HELDOUT_EVERY}th file in name order",
                "train_files": len(data.train_files),
                "heldout_files": list(data.heldout_files),
                "train_chars": len(data.train_text),
                "heldout_txt_bytes": len(heldout_text.encode("utf-8")),
            },
            "tokenizer": {
                "type": "sentencepiece bpe, byte_fallback, identity normalizer, no dummy prefix, split digits",
                "vocab_size": sp.get_piece_size(),
                "special_ids": {"pad": sp.pad_id(), "eos": sp.eos_id(), "bos": sp.bos_id(), "unk": sp.unk_id()},
            },
            "tokens": {"train": len(train_ids), "heldout_txt": count, "seen": stats["tokens_seen"]},
            "model": {"preset": config.name, "parameters": n_params, "dtype": str(SHIP_DTYPE).removeprefix("torch.")},
            "training": {
                **{k: v for k, v in asdict(cfg).items() if k not in ("seed",)},
                "steps": stats["steps"],
                "minutes": stats["minutes"],
                "final_train_loss": round(float(stats["final_train_loss"]), 4),
                "epochs": round(stats["tokens_seen"] / len(train_ids), 2),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            },
            "eval": {
                "heldout_perplexity": round(ppl, 3),
                "heldout_perplexity_fp32_weights": round(ppl_fp32, 3),
                "text": "heldout.txt",
                "protocol": (
                    f"sp.encode(heldout.txt) without BOS, cut into pieces of {EVAL_SEQ_LEN - 1} tokens, "
                    f"each scored as [BOS]+piece from position 0 in chunks of {EVAL_CHUNK} with state carried; "
                    "perplexity = exp(mean NLL over all text tokens), fp32 compute"
                ),
                "seq_len": EVAL_SEQ_LEN,
                "chunk": EVAL_CHUNK,
            },
            "samples": {"temperature": 0.8, "top_k": 40, "seed": cfg.seed, "continuations": samples},
            "seed": cfg.seed,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        with atomic_dir(Path(out_dir)) as tmp:
            hf = save_hf_folder(config, model.state_dict(), tmp / "hf", tokenizer=tok_path, dtype=SHIP_DTYPE)
            for f in hf.iterdir():
                f.rename(tmp / f.name)
            hf.rmdir()
            report["model"]["safetensors_bytes"] = (tmp / "model.safetensors").stat().st_size
            (tmp / "heldout.txt").write_text(heldout_text, encoding="utf-8")
            write_json(tmp / "train_report.json", report)
            # mkdtemp/mkstemp create 0700/0600; the bundle is package data that everyone reads.
            tmp.chmod(0o755)
            for f in tmp.iterdir():
                f.chmod(0o644)
    log.info("wrote %s", out_dir)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. exporter/bundled/brown-small")
    parser.add_argument("--minutes", type=float, default=TrainConfig.minutes, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, default=None, help="step-based schedule (bit-exact reruns)")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    parser.add_argument("--seq-len", type=int, default=TrainConfig.seq_len)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    cfg = TrainConfig(
        minutes=args.minutes, steps=args.steps, seed=args.seed, batch=args.batch, seq_len=args.seq_len, lr=args.lr
    )
    report = run(args.out, cfg)
    ev, tr = report["eval"], report["training"]
    print(
        f"{args.out}: {report['model']['parameters']:,} params, {tr['steps']} steps in {tr['minutes']} min, "
        f"train loss {tr['final_train_loss']}, held-out perplexity {ev['heldout_perplexity']}"
    )


if __name__ == "__main__":
    main()
