"""Quality of an artifact against the fp32 PyTorch reference, for any :class:`Backend`.

Part of ``rgmobile validate`` for every quantized artifact (JSON under ``"quality"``
and a printed table); format-agnostic, so ExecuTorch and Core ML artifacts get the
same report. Thresholds per precision are data (runtime_py/thresholds.py
``QUALITY_THRESHOLDS``). Everything below is measured on held-out text, both sides
fed the same tokens (teacher forcing):

  size        artifact bytes (every manifest file except the tokenizer) and their ratio to
              the fp32 size, defined as 4 bytes x the config's parameter count: one fp32 copy
              of the weights, whatever the format does with them (the fp32 ONNX artifact itself
              stores two when its graphs hold their weights inline).
  logits      over every scored position: max abs error, relative L2 (||a - r|| / ||r||),
              mean and worst cosine, SQNR in dB (10 log10 sum r^2 / sum (a - r)^2).
  agreement   top-1 agreement; mean KL(reference || artifact) in nats per token.
  perplexity  the protocol of training/evaluate.py: the text tokenized without BOS, cut into
              pieces of ``seq_len - 1`` tokens, each scored as [BOS] + piece from position 0,
              run in the backend's own steps (prefill chunks, then t = 1), so every sequence
              crosses the attention window several times; ppl = exp(mean NLL), artifact and
              reference, and the increase in percent.
  after a prompt  the first half of each of the first ``after_prompt`` sequences (default 2) run as
              a prompt (whole prefill chunks through the prefill program, as ``generate`` runs
              one), the second half teacher-forced after it:
              perplexity increase, KL and top-1 there (``*_after_prompt``; reported, no threshold).
              The metrics above run artifacts whose prefill returns the last position's logits
              one position at a time, so only these score what the prefill program leaves in the state.
  greedy      from the first ``prompt_tokens`` of ``greedy_prompts`` pieces, both sides continue
              greedily for ``greedy_tokens``; the identical prefix length (mean and min).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.artifact.manifest import Manifest
from exporter.errors import RgMobileError
from runtime_py.backend import Backend
from runtime_py.generate import run_tokens
from runtime_py.thresholds import QUALITY_METRICS, exceeded

log = logging.getLogger(__name__)

HELDOUT_FILE = "heldout.txt"  # beside the bundled checkpoint (training/train.py writes it)


@dataclass(frozen=True)
class QualityOptions:
    """What the quality report runs (``rgmobile validate --text/--quality-tokens`` map to these).

    Fields:
      text: held-out text file; None = ``heldout.txt`` beside the checkpoint, else a built-in sample.
      max_tokens: text tokens scored (a few thousand: several sequences, many windows).
      seq_len: tokens per scored sequence including BOS (training/evaluate.py EVAL_SEQ_LEN).
      greedy_prompts: sequences whose start is continued greedily on both sides.
      prompt_tokens: tokens of each greedy prompt (BOS included).
      greedy_tokens: length of each greedy continuation.
      after_prompt: sequences also scored after a prompt (their first half run through the prefill
        program), from the first; each costs half a sequence of teacher forcing more.
    """

    text: Path | None = None
    max_tokens: int = 4096
    seq_len: int = 512
    greedy_prompts: int = 4
    prompt_tokens: int = 16
    greedy_tokens: int = 32
    after_prompt: int = 2

    def __post_init__(self) -> None:
        if self.max_tokens < 2 or self.seq_len < 2:
            raise RgMobileError("quality: --quality-tokens and the sequence length must be >= 2")
        if self.greedy_prompts < 0 or self.greedy_tokens < 0 or self.prompt_tokens < 1:
            raise RgMobileError("quality: greedy prompts/tokens must be >= 0 and prompt tokens >= 1")
        if self.text is not None and not Path(self.text).is_file():
            raise RgMobileError(f"--text {self.text}: no such file")


@dataclass
class QualityReport:
    text: str  # where the text came from
    tokens: int  # scored tokens
    sequences: int
    seq_len: int
    size: dict[str, Any]
    metrics: dict[str, float]
    thresholds: dict[str, float]
    greedy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_text(text: Path | None, checkpoint: Path | None, fallback: str) -> tuple[str, str]:
    """(text, label): ``text``, else ``heldout.txt`` beside the checkpoint, else ``fallback``."""
    if text is not None:
        return Path(text).read_text(encoding="utf-8"), str(text)
    if checkpoint is not None:
        folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
        if (folder / HELDOUT_FILE).is_file():
            return (folder / HELDOUT_FILE).read_text(encoding="utf-8"), str(folder / HELDOUT_FILE)
    log.warning("quality: no held-out text (--text or %s beside the checkpoint); using a built-in sample", HELDOUT_FILE)
    return fallback, "built-in sample (repeated; not held-out text)"


def sequences(ids: list[int], bos_id: int, seq_len: int, max_tokens: int) -> list[list[int]]:
    """[BOS] + pieces of ``seq_len - 1`` text tokens (the last one shorter), ``max_tokens`` in all."""
    ids = ids[:max_tokens]
    piece = seq_len - 1
    return [[bos_id, *ids[i : i + piece]] for i in range(0, len(ids), piece) if ids[i : i + piece]]


def artifact_size(manifest: Manifest) -> dict[str, Any]:
    params = manifest.config.parameter_counts()["total"]
    size = sum(f.size for f in manifest.files if f.path != manifest.tokenizer_file)
    return {
        "artifact_bytes": size,
        "fp32_bytes": 4 * params,
        "ratio": size / (4 * params),
        "fp32_basis": f"4 bytes x {params:,} parameters (config.parameter_counts)",
    }


class _Stats:
    """Running sums over positions: logits error, agreement, KL and NLL of both sides."""

    def __init__(self) -> None:
        self.n = 0
        self.max_abs = 0.0
        self.noise = self.signal = 0.0
        self.cos_sum, self.cos_min = 0.0, 1.0
        self.top1 = 0
        self.kl_sum, self.kl_max = 0.0, 0.0
        self.nll_a = self.nll_r = 0.0

    def add(self, a: np.ndarray, r: np.ndarray, targets: np.ndarray) -> None:
        """a, r: logits [t, v] of artifact and reference; targets [t] the next tokens."""
        a, r = a.astype(np.float64), r.astype(np.float64)
        d = a - r
        self.n += len(a)
        self.max_abs = max(self.max_abs, float(np.abs(d).max()))
        self.noise += float((d * d).sum())
        self.signal += float((r * r).sum())
        cos = (a * r).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(r, axis=-1), 1e-30)
        self.cos_sum += float(cos.sum())
        self.cos_min = min(self.cos_min, float(cos.min()))
        self.top1 += int((a.argmax(-1) == r.argmax(-1)).sum())
        la, lr = _log_softmax(a), _log_softmax(r)
        kl = (np.exp(lr) * (lr - la)).sum(-1)
        self.kl_sum += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max()))
        rows = np.arange(len(targets))
        self.nll_a -= float(la[rows, targets].sum())
        self.nll_r -= float(lr[rows, targets].sum())

    def metrics(self) -> dict[str, float]:
        n = max(self.n, 1)
        ppl_a, ppl_r = math.exp(self.nll_a / n), math.exp(self.nll_r / n)
        return {
            "ppl_reference": ppl_r,
            "ppl_artifact": ppl_a,
            "ppl_increase_pct": 100.0 * (ppl_a / ppl_r - 1.0),
            "kl_mean": self.kl_sum / n,
            "kl_max": self.kl_max,
            "top1_agreement_text": self.top1 / n,
            "max_abs_logits_text": self.max_abs,
            "rel_l2": math.sqrt(self.noise / max(self.signal, 1e-300)),
            "cosine_mean": self.cos_sum / n,
            "cosine_min": self.cos_min,
            "sqnr_db": 10 * math.log10(self.signal / self.noise) if self.noise > 0 else float("inf"),
        }


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _greedy(backend: Backend, prompt: list[int], n: int) -> list[int]:
    logits, state = run_tokens(backend, prompt, backend.init_state(1), all_logits=False)
    last, out = logits[-1], []
    for i in range(n):
        token = int(np.argmax(last))
        out.append(token)
        if i + 1 < n:
            step, state = backend.step(np.array([[token]], np.int64), np.array([[len(prompt) + i]], np.int64), state)
            last = step[0, -1]
    return out


def text_metrics(
    artifact: Backend, reference: Backend, seqs: list[list[int]], after_prompt: int = QualityOptions.after_prompt
) -> tuple[dict[str, float], int]:
    """(logits, agreement and perplexity metrics, scored positions) of teacher-forced ``seqs`` on both sides.

    ``seqs``: token sequences from :func:`sequences` (each starts with BOS); the first ``after_prompt``
    of them are also scored after a prompt (``*_after_prompt``).
    """
    if not seqs:
        raise RgMobileError("quality: the held-out text has no tokens")
    stats, prefilled = _Stats(), _Stats()
    for k, seq in enumerate(seqs):
        # every position's logits, in each backend's own step lengths (t = 1 steps for an artifact
        # whose programs return the last position's logits only)
        la, _ = run_tokens(artifact, seq[:-1], artifact.init_state(1))
        lr, _ = run_tokens(reference, seq[:-1], reference.init_state(1))
        stats.add(la, lr, np.asarray(seq[1:], np.int64))
        half = len(seq) // 2
        if half >= 2 and k < after_prompt:  # the first half as a prompt (prefill chunks), the second scored
            la, _ = _after_prompt(artifact, seq, half)
            lr, _ = _after_prompt(reference, seq, half)
            prefilled.add(la, lr, np.asarray(seq[half + 1 :], np.int64))
        log.info("quality: sequence %d/%d (%d tokens)", k + 1, len(seqs), len(seq) - 1)
    metrics = stats.metrics()
    if prefilled.n:
        after = prefilled.metrics()
        metrics.update({f"{m}{PREFILLED}": after[m] for m in PREFILLED_METRICS})
        metrics[f"tokens{PREFILLED}"] = prefilled.n
    return metrics, stats.n


PREFILLED = "_after_prompt"
PREFILLED_METRICS = ("ppl_increase_pct", "kl_mean", "top1_agreement_text")


def _after_prompt(backend: Backend, seq: list[int], half: int) -> tuple[np.ndarray, Any]:
    """Logits of seq[half:-1] teacher-forced after seq[:half] ran as a prompt: its whole prefill chunks
    through the prefill program (the positions teacher forcing runs one at a time for an artifact
    whose prefill returns the last logits only), so the prefill program's state is what gets scored."""
    _, state = run_tokens(backend, seq[:half], backend.init_state(1), all_logits=False)
    return run_tokens(backend, seq[half:-1], state, start=half)


def quality_report(
    artifact: Backend,
    reference: Backend,
    manifest: Manifest,
    ids: list[int],
    text_label: str,
    options: QualityOptions,
    thresholds: dict[str, float],
) -> QualityReport:
    """Score ``ids`` (held-out text tokens, no BOS) on both backends; see the module docstring."""
    seqs = sequences(ids, manifest.config.bos_id, options.seq_len, options.max_tokens)
    metrics, scored = text_metrics(artifact, reference, seqs, options.after_prompt)
    matches = []
    for seq in seqs[: options.greedy_prompts]:
        prompt = seq[: options.prompt_tokens]
        ga = _greedy(artifact, prompt, options.greedy_tokens)
        gr = _greedy(reference, prompt, options.greedy_tokens)
        matches.append(next((i for i, (x, y) in enumerate(zip(ga, gr)) if x != y), len(ga)))
    size = artifact_size(manifest)
    metrics["size_ratio"] = size["ratio"]
    metrics["greedy_match_mean"] = float(np.mean(matches)) if matches else float(options.greedy_tokens)
    metrics["greedy_match_min"] = float(min(matches, default=options.greedy_tokens))
    greedy = {"prompts": len(matches), "prompt_tokens": options.prompt_tokens, "tokens": options.greedy_tokens,
              "common_prefix": matches}  # fmt: skip
    return QualityReport(
        text=text_label, tokens=scored, sequences=len(seqs), seq_len=options.seq_len, size=size,
        metrics=metrics, thresholds=thresholds, greedy=greedy,
    )  # fmt: skip


def failed_metrics(report: QualityReport) -> list[tuple[str, float, float, str]]:
    """(metric, value, threshold, bound) of every quality threshold exceeded."""
    out: list[tuple[str, float, float, str]] = []
    for metric, bound in QUALITY_METRICS.items():
        limit = report.thresholds.get(metric)
        if limit is not None and exceeded(metric, report.metrics[metric], limit):
            out.append((metric, report.metrics[metric], limit, bound))
    return out


def evaluate_quality(
    artifact: Backend,
    reference: Backend,
    manifest: Manifest,
    artifact_dir: Path,
    checkpoint: Path | None,
    options: QualityOptions,
    fallback_text: str,
) -> QualityReport:
    """The quality report of an opened artifact: resolves the text and the thresholds, then scores."""
    from runtime_py.thresholds import quality_thresholds_for
    from runtime_py.tokenizer import Tokenizer

    text, label = resolve_text(options.text, checkpoint, fallback_text)
    ids = Tokenizer(Path(artifact_dir) / manifest.tokenizer_file).encode(text, add_bos=False)
    if ids and label.startswith("built-in"):
        ids = (ids * (options.max_tokens // len(ids) + 1))[: options.max_tokens]
    thresholds = quality_thresholds_for(manifest.format, manifest.precision)
    return quality_report(artifact, reference, manifest, ids, label, options, thresholds)
