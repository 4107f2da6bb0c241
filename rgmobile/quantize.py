"""``rgmobile quantize``: an fp32 checkpoint in, a quantized checkpoint folder out, with a quality report.

Stages: load the fp32 checkpoint (an already quantized one is refused); choose the texts (GPTQ
calibrates on the first half of the model's held-out text, or ``calibration``; the report then
scores text calibration did not see); quantize (round-to-nearest, or GPTQ from
quantization/gptq.py); score the quantized eager reference against fp32 on the evaluation text
(runtime_py/quality.py's teacher-forced metrics) plus weight SQNR; write the folder atomically
(exporter/checkpoint/quantized.py) with ``quality_report.json``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.checkpoint.quantized import (
    CONFIG_NAME,
    METHODS,
    REPORT_NAME,
    SINGLE_NAME,
    TOKENIZER_NAME,
    QuantizationConfig,
    is_quantized_folder,
    weight_sqnr,
    write_quantized_checkpoint,
)
from exporter.errors import RgMobileError
from quantization.qweights import load_dequantized, quantize_weights
from quantization.recipe import Recipe, load_recipe

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HELDOUT_NAME = "heldout.txt"
SEQ_LEN = 512  # tokens per scored / calibration sequence, BOS included (runtime_py/quality.py)
OURS = frozenset({CONFIG_NAME, SINGLE_NAME, TOKENIZER_NAME, REPORT_NAME, HELDOUT_NAME})


@dataclass(frozen=True)
class QuantizeOptions:
    """What ``rgmobile quantize`` does (its Typer options map 1:1 to these fields).

    Fields:
      out: the quantized checkpoint folder (replaced only if it is one, holding only our files).
      checkpoint: the fp32 checkpoint (HF folder or official .pt); None = the bundled model.
      recipe: "int8", "int4" or a recipe .json (quantization/recipe.py).
      group_size: int4 group size, overriding the recipe's.
      embedding_bits: 8 or 4 for the tied embedding/head, overriding the recipe's.
      method: "rtn" (round to nearest) or "gptq" (calibrated, quantization/gptq.py).
      calibration: GPTQ calibration text file; None = the first half of the checkpoint's heldout.txt.
      calibration_tokens: calibration tokens used at most.
      eval_text: text the quality report scores; None = heldout.txt beside the checkpoint (its
        second half when that file's first half calibrated GPTQ).
      eval_tokens: text tokens the quality report scores at most.
    """

    out: Path
    checkpoint: Path | None = None
    recipe: str = "int4"
    group_size: int | None = None
    embedding_bits: int | None = None
    method: str = "rtn"
    calibration: Path | None = None
    calibration_tokens: int = 4096
    eval_text: Path | None = None
    eval_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RgMobileError(f"--method must be one of {list(METHODS)}, got {self.method!r}")
        if self.embedding_bits not in (None, 4, 8):
            raise RgMobileError(f"--embedding-bits must be 8 or 4, got {self.embedding_bits}")
        if self.calibration is not None and self.method != "gptq":
            raise RgMobileError("--calibration only applies to --method gptq (round-to-nearest needs no text)")
        for option, path in (("--calibration", self.calibration), ("--eval-text", self.eval_text)):
            if path is not None and not Path(path).is_file():
                raise RgMobileError(f"{option} {path}: no such file")
        if self.calibration_tokens < 2 or self.eval_tokens < 2:
            raise RgMobileError("--calibration-tokens and --eval-tokens must be >= 2")
        if not self.quant_recipe.is_quantized:
            raise RgMobileError(f"--recipe {self.recipe} quantizes nothing; use int8, int4 or a recipe .json")
        check_quant_out(Path(self.out))

    @property
    def quant_recipe(self) -> Recipe:
        return load_recipe(self.recipe).with_options(self.group_size, self.embedding_bits)


def check_quant_out(out: Path) -> None:
    """Refuse an ``--out`` that is not new, empty, or a quantized checkpoint holding only our files."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise RgMobileError(f"--out {out} is a file or a symbolic link; choose a new or empty folder")
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise RgMobileError(f"--out {out} is the current folder or holds it, which would be replaced")
    if not out.is_dir() or not any(out.iterdir()):
        return
    theirs = sorted(p.name for p in out.iterdir() if p.name not in OURS or not p.is_file())
    if not is_quantized_folder(out) or theirs:
        what = f"holds files rgmobile quantize does not write ({', '.join(theirs[:3])})" if theirs else (
            "is not a quantized checkpoint")  # fmt: skip
        raise RgMobileError(f"--out {out} {what}; it is not replaced: choose a new or empty --out")


def split_halves(text: str) -> tuple[str, str]:
    """``text`` cut in two at the line break nearest its middle (at the middle if it has none)."""
    mid = len(text) // 2
    before, after = text.rfind("\n", 0, mid), text.find("\n", mid)
    candidates = [i for i in (before, after) if i > 0]
    cut = min(candidates, key=lambda i: abs(i - mid)) + 1 if candidates else mid
    return text[:cut], text[cut:]


@dataclass(frozen=True)
class Texts:
    """The evaluation text (and GPTQ's calibration text), each with a label saying where it came from."""

    eval_text: str
    eval_label: str
    eval_is_heldout: bool  # real held-out text (written beside the weights for later reports)
    calibration: str | None = None
    calibration_label: str | None = None
    halves: bool = False  # calibration and evaluation are the two halves of one held-out text


def choose_texts(options: QuantizeOptions, source: Path) -> Texts:
    """Evaluation and calibration texts; calibration never overlaps evaluation by default."""
    from runtime_py.validate import PROMPT_TEXT

    folder = source if source.is_dir() else source.parent
    heldout = folder / HELDOUT_NAME
    held = heldout.read_text(encoding="utf-8") if heldout.is_file() else None
    calib = calib_label = None
    if options.method == "gptq":
        if options.calibration is not None:
            calib, calib_label = Path(options.calibration).read_text(encoding="utf-8"), str(options.calibration)
        elif held is not None:
            calib, held = split_halves(held)
            calib_label = f"{heldout} (first half, {len(calib):,} characters)"
        else:
            raise RgMobileError(f"--method gptq needs calibration text: pass --calibration FILE (no {heldout})")
    if options.eval_text is not None:
        return Texts(Path(options.eval_text).read_text(encoding="utf-8"), str(options.eval_text), True, calib,
                     calib_label)  # fmt: skip
    if held is not None:
        halves = calib is not None and options.calibration is None
        label = f"{heldout} (second half: the first calibrated GPTQ)" if halves else str(heldout)
        return Texts(held, label, True, calib, calib_label, halves)
    log.warning("quantize: no %s beside the checkpoint and no --eval-text; scoring a built-in sample", HELDOUT_NAME)
    return Texts(PROMPT_TEXT, "built-in sample (repeated; not held-out text)", False, calib, calib_label)


def _token_sequences(tokenizer_path: Path, text: str, bos: int, max_tokens: int, repeat: bool) -> list[list[int]]:
    from runtime_py.quality import sequences
    from runtime_py.tokenizer import Tokenizer

    ids = Tokenizer(tokenizer_path).encode(text, add_bos=False)
    if ids and repeat:
        ids = (ids * (max_tokens // len(ids) + 1))[:max_tokens]
    return sequences(ids, bos, SEQ_LEN, max_tokens)


@dataclass(frozen=True)
class QuantizeResult:
    out: Path
    report: dict[str, Any]


def _overlap(texts: Texts) -> str:
    """Whether the evaluation text was seen by calibration, as the report states it."""
    if texts.calibration is None:
        return "none: no calibration (round to nearest)"
    if texts.calibration == texts.eval_text:
        return "full: the same text calibrated and was scored"
    if texts.halves:
        return "none: calibration used the other half of the held-out text"
    return "not checked: calibration and evaluation are separate files"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def quantize_checkpoint(options: QuantizeOptions) -> QuantizeResult:
    """Run every stage (module docstring); returns the folder written and its quality report."""
    from exporter.checkpoint.loader import default_checkpoint, load_checkpoint
    from runtime_py.quality import text_metrics
    from runtime_py.torch_backend import TorchBackend

    source = Path(options.checkpoint) if options.checkpoint is not None else default_checkpoint()
    if Path(options.out).resolve() == source.resolve():
        raise RgMobileError(f"--out {options.out} is the checkpoint itself; choose another folder")
    if (source / "manifest.json").is_file():
        raise RgMobileError(f"{source} is an exported artifact; quantize takes the checkpoint it was exported from")
    ckpt = load_checkpoint(source)
    if ckpt.quantization is not None:
        raise RgMobileError(
            f"{source}: already quantized (recipe {ckpt.quantization.recipe.name}, {ckpt.quantization.method}); "
            "quantize the fp32 checkpoint it came from"
        )
    recipe, model, bos = options.quant_recipe, ckpt.model, ckpt.config.bos_id
    texts = choose_texts(options, source)
    calibration: dict[str, Any] | None = None
    t0 = time.perf_counter()
    if options.method == "gptq":
        from quantization.gptq import gptq_weights

        assert texts.calibration is not None
        batches = calibration_batches(ckpt.tokenizer_path, texts.calibration, SEQ_LEN, options.calibration_tokens)
        tokens = sum(int(b.shape[1]) - 1 for b in batches)
        calibration = {"text": texts.calibration_label, "tokens": tokens, "sequences": len(batches), "seq_len": SEQ_LEN}
        log.info("quantize: GPTQ on %d calibration tokens (%d sequences)", tokens, len(batches))
        weights = gptq_weights(model, recipe, batches)
    else:
        weights = quantize_weights(model, recipe)
    quantize_seconds = time.perf_counter() - t0
    quantized = load_dequantized(copy.deepcopy(model), weights).eval()

    t1 = time.perf_counter()
    eval_seqs = _token_sequences(ckpt.tokenizer_path, texts.eval_text, bos, options.eval_tokens,
                                 not texts.eval_is_heldout)  # fmt: skip
    metrics, scored = text_metrics(TorchBackend(quantized), TorchBackend(model), eval_seqs)
    sqnr = weight_sqnr(model, weights)
    report: dict[str, Any] = {
        "checkpoint": str(source.resolve()),
        "recipe": recipe.to_dict(),
        "method": options.method,
        "calibration": calibration,
        "text": {"source": texts.eval_label, "tokens": scored, "sequences": len(eval_seqs), "seq_len": SEQ_LEN,
                 "calibration_overlap": _overlap(texts)},
        "metrics": {k: _finite(v) for k, v in metrics.items()},
        "weights_sqnr_db": {k: _finite(v) if isinstance(v, float) else v for k, v in sqnr.items()},
        "size": {"fp32_bytes": 4 * ckpt.config.parameter_counts()["total"],
                 "fp32_basis": "4 bytes x config.parameter_counts()['total']"},
        "seconds": {"quantize": round(quantize_seconds, 3), "report": round(time.perf_counter() - t1, 3)},
    }  # fmt: skip
    qconfig = QuantizationConfig(recipe=recipe, method=options.method, calibration=calibration)
    extra = {HELDOUT_NAME: texts.eval_text} if texts.eval_is_heldout else {}
    write_quantized_checkpoint(Path(options.out), model, qconfig, weights, ckpt.tokenizer_path, report, extra,
                               check_replace=check_quant_out)  # fmt: skip
    log.info("quantized %s (%s, %s) to %s", source, recipe.name, options.method, options.out)
    return QuantizeResult(Path(options.out), report)


def calibration_batches(tokenizer_path: Path, text: str, seq_len: int, max_tokens: int) -> list[torch.Tensor]:
    """Token-id batches [1, seq_len] of ``text``: [BOS] + ``seq_len - 1`` text tokens each.

    The text is tokenized without BOS and its first ``max_tokens`` tokens cut into whole pieces
    (a shorter tail is dropped), every piece run from position 0 like training/evaluate.py.
    """
    import torch

    from runtime_py.tokenizer import Tokenizer

    if seq_len < 2:
        raise RgMobileError(f"calibration: sequence length must be >= 2, got {seq_len}")
    tok = Tokenizer(Path(tokenizer_path))
    ids = tok.encode(text, add_bos=False)[:max_tokens] if text.strip() else []
    piece = seq_len - 1
    if len(ids) < piece:
        raise RgMobileError(
            f"calibration: the text has {len(ids)} tokens (of at most {max_tokens} used), fewer than one "
            f"sequence of {piece}; pass a longer --calibration text"
        )
    bos = [tok.bos_id] if tok.bos_id >= 0 else []
    return [
        torch.tensor([[*bos, *ids[i : i + piece]]], dtype=torch.int64) for i in range(0, len(ids) - piece + 1, piece)
    ]
