"""``rgmobile validate``: an exported artifact against the PyTorch reference, step by step.

Both sides run the same tokens with the same step plan: a prompt long enough
for several prefill chunks plus a remainder (run as t = 1 steps), then decode
steps (3 x window by default, so the KV ring wraps several times) whose tokens
are sampled, with a fixed seed, from the *reference* logits and fed to both.
After every step: logits error (max abs, relative, cosine, top-1) and the max
error of every state tensor. Separately, both sides continue greedily from
their own post-prompt state and the common prefix is counted.

Quantized artifacts (or any, with ``quality=True``) also get the quality report of
runtime_py/quality.py: size, perplexity, KL, top-1, SQNR on held-out text against the fp32
reference, with per-recipe thresholds whose failures join the parity failures.

Thresholds are data (runtime_py/thresholds.py), per format and precision. A
threshold exceeded is a *result* (``ValidationReport.failures``; the CLI exits 1);
a broken artifact (manifest, sha256, missing file) is an :class:`RgMobileError` (exit 2).

A Core ML artifact also gets its saved spec checked against the manifest; off
macOS, where Core ML cannot run, its saved programs run in the emulator
(coremltools' op definitions, runtime_py/coreml_emulator.py) with the artifact's
thresholds, the pre-conversion program is checked too, and the report says
"Core ML runtime predictions: not run" with status "emulated-pass" (CLI exit 3,
as "incomplete"), never "passed" (runtime_py/validate_coreml.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.artifact.manifest import read_manifest
from exporter.errors import RgMobileError
from exporter.fsio import write_json
from runtime_py.backend import Backend, State, last_logits_only, plan_chunks
from runtime_py.open import open_artifact_backend
from runtime_py.thresholds import METRICS, exceeded, thresholds_for
from runtime_py.validate_coreml import DESCRIPTION as EMULATED_NAME

log = logging.getLogger(__name__)

# Plain English so a trained model sees realistic text; tiled when a longer prompt is needed.
PROMPT_TEXT = (
    "The river ran past the old stone house and under the bridge, where the children sat in the "
    "evening light and watched the boats go by. Their mother called them home for supper, but they "
    "stayed a little longer, talking about the big tree on the hill and the dog that lived beside it."
)


@dataclass(frozen=True)
class ValidateOptions:
    """What ``rgmobile validate`` runs (Typer options map 1:1 to these).

    Fields:
      artifact: the exported artifact folder (has manifest.json).
      checkpoint: the reference checkpoint; None = the manifest's source checkpoint.
      steps: decode steps after the prompt; None = 3 x window (the ring wraps 3 times).
      prompt_tokens: prompt length; None = 2 prefill chunks + a remainder (t = 1 steps).
      greedy_tokens: length of the independent greedy continuations compared.
      seed: seed of the reference sampling that picks the decode tokens.
      threads: CPU threads for the artifact's runtime and the PyTorch reference.
      report: write the JSON report here (optional).
      plot: write a PNG of error vs position here (optional).
      quality: run the quality report (runtime_py/quality.py: size, perplexity, KL, ...
        on held-out text); None = only for quantized artifacts (manifest ``quantization``).
      text: held-out text for the quality report; None = heldout.txt beside the checkpoint.
      quality_tokens: text tokens the quality report scores.
    """

    artifact: Path
    checkpoint: Path | None = None
    steps: int | None = None
    prompt_tokens: int | None = None
    greedy_tokens: int = 64
    seed: int = 0
    threads: int | None = None
    report: Path | None = None
    plot: Path | None = None
    quality: bool | None = None
    text: Path | None = None
    quality_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise RgMobileError(f"--steps must be >= 0, got {self.steps}")
        if self.prompt_tokens is not None and self.prompt_tokens < 1:
            raise RgMobileError(f"--prompt-tokens must be >= 1, got {self.prompt_tokens}")
        if self.greedy_tokens < 0:
            raise RgMobileError(f"--greedy-tokens must be >= 0, got {self.greedy_tokens}")


@dataclass(frozen=True)
class Failure:
    """One threshold exceeded: ``metric`` = ``value``, allowed ``bound`` ``threshold``."""

    metric: str
    value: float
    threshold: float
    bound: str  # "max" or "min"
    where: str

    def message(self) -> str:
        op = ">" if self.bound == "max" else "<"
        return f"{self.metric} = {self.value:.3g} {op} threshold {self.threshold:.3g} ({self.where})"


@dataclass
class StepRecord:
    kind: str  # "prefill" (a prompt call of t > 1), "prompt" (t = 1 remainder) or "decode"
    start: int
    t: int
    max_abs_logits: float
    max_rel_logits: float
    min_cosine: float
    max_state_abs: float
    worst_state: str
    top1_agreement: float


@dataclass
class ValidationReport:
    artifact: str
    format: str
    precision: str
    checkpoint: str
    window: int
    prefill_chunk: int
    prompt_tokens: int
    decode_steps: int
    thresholds: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    positions: dict[str, list[Any]] = field(default_factory=dict)  # per-token arrays
    greedy: dict[str, Any] = field(default_factory=dict)
    # What ran against the reference: "artifact", or (Core ML off macOS) the pre-conversion program.
    compared: str = "artifact"
    # Extra checks as {"name", "status": "passed" | "failed" | "not run", "detail"} (runtime_py/validate_coreml.py).
    checks: list[dict[str, str]] = field(default_factory=list)
    # The quality report (runtime_py/quality.py QualityReport.to_dict()), {} when it did not run.
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """ "failed", "incomplete" (nothing failed but a check could not run here), "emulated-pass"
        (nothing failed; the program ran in an emulator, its runtime did not run here) or "passed"."""
        if self.failures or any(c["status"] == "failed" for c in self.checks):
            return "failed"
        if any(c["status"] == "not run" for c in self.checks):
            return "emulated-pass" if self.compared == EMULATED_NAME else "incomplete"
        return "passed"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        out["status"] = self.status
        out["failures"] = [{**asdict(f), "message": f.message()} for f in self.failures]
        return out


def prompt_ids(tokenizer: Any, length: int) -> list[int]:
    """BOS + PROMPT_TEXT tokens, tiled to exactly ``length`` tokens."""
    body = tokenizer.encode(PROMPT_TEXT + " ", add_bos=False) or [tokenizer.bos_id]
    ids = [tokenizer.bos_id]
    while len(ids) < length:
        ids.extend(body)
    return ids[:length]


class _Comparator:
    """Accumulates per-step and per-position errors between the artifact (a) and the reference (r)."""

    def __init__(self, artifact: Backend, reference: Backend) -> None:
        self.a, self.r = artifact, reference
        self.steps: list[StepRecord] = []
        self.pos: dict[str, list[Any]] = {"position": [], "max_abs_logits": [], "cosine": [], "top1_match": []}
        self.nonfinite_position: int | None = None  # first position where the artifact's logits were NaN/Inf

    def step(
        self, kind: str, ids: list[int], start: int, sa: State, sr: State
    ) -> tuple[np.ndarray, np.ndarray, State, State]:
        """Run ``ids`` at ``start`` on both; returns (last artifact logits, last reference logits, states).

        An artifact whose programs return the last position's logits only is compared there (and
        on the state after the step); the other positions have no logits to compare."""
        t = len(ids)
        x = np.asarray(ids, dtype=np.int64)[None, :]
        p = np.arange(start, start + t, dtype=np.int64)[None, :]
        la, sa = self.a.step(x, p, sa)
        lr, sr = self.r.step(x, p, sr)
        a, r = la[0].astype(np.float64), lr[0].astype(np.float64)  # [t, v]
        if not np.isfinite(r).all():  # nothing to compare against: a user error, not a parity result
            bad = start + int(np.argmax(~np.isfinite(r).all(axis=-1)))
            raise RgMobileError(
                f"validate: the reference (the checkpoint in PyTorch) produced NaN/Inf logits at position {bad}; "
                "the checkpoint's weights are broken (NaN/Inf or overflowing): fix or re-download them"
            )
        first = start  # the first position with artifact logits
        if a.shape[0] == 1 and t > 1 and last_logits_only(self.a):
            r, first = r[-1:], start + t - 1
        finite = np.isfinite(a).all(axis=-1)  # [rows]
        if not finite.all() and self.nonfinite_position is None:
            self.nonfinite_position = first + int(np.argmax(~finite))
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf from the artifact: reported, not warned
            diff = np.where(finite, np.abs(a - r).max(axis=-1), np.nan)
            cos = (a * r).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(r, axis=-1), 1e-30)
            cos = np.where(finite, cos, np.nan)
            top1 = finite & (a.argmax(-1) == r.argmax(-1))
            state_err, worst = 0.0, ""
            arrays_a, arrays_r = self.a.state_arrays(sa), self.r.state_arrays(sr)
            for name, ref in arrays_r.items():
                err = float(np.abs(arrays_a[name].astype(np.float64) - ref.astype(np.float64)).max())
                if err > state_err or err != err or not worst:
                    state_err, worst = err, name
        self.pos["position"].extend(range(first, start + t))
        self.pos["max_abs_logits"].extend(float(d) for d in diff)
        self.pos["cosine"].extend(float(c) for c in cos)
        self.pos["top1_match"].extend(bool(m) for m in top1)
        scale = max(float(np.abs(r).max()), 1e-6)
        self.steps.append(
            StepRecord(kind, start, t, float(diff.max()), float(diff.max()) / scale, float(cos.min()),
                       state_err, worst, float(top1.mean()))
        )  # fmt: skip
        return la[0, -1], lr[0, -1], sa, sr


def _greedy(backend: Backend, state: State, last: np.ndarray, start: int, n: int) -> list[int]:
    out: list[int] = []
    for i in range(n):
        token = int(np.argmax(last))
        out.append(token)
        if i + 1 < n:
            logits, state = backend.step(np.array([[token]], np.int64), np.array([[start + i]], np.int64), state)
            last = logits[0, -1]
    return out


def _sample(logits: np.ndarray, rng: np.random.Generator) -> int:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def compare(
    artifact: Backend, reference: Backend, prompt: list[int], steps: int, greedy_tokens: int, seed: int = 0
) -> tuple[_Comparator, dict[str, Any]]:
    """Run both backends side by side; returns the per-step comparison and the greedy result."""
    cmp = _Comparator(artifact, reference)
    sa, sr = artifact.init_state(1), reference.init_state(1)
    pos = 0
    last_a = last_r = np.zeros(0)
    for n in plan_chunks(len(prompt), artifact.seq_lens()):
        kind = "prefill" if n > 1 else "prompt"
        last_a, last_r, sa, sr = cmp.step(kind, prompt[pos : pos + n], pos, sa, sr)
        pos += n
    prompt_state = (sa, sr, last_a, last_r)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        token = _sample(last_r, rng)
        _, last_r, sa, sr = cmp.step("decode", [token], pos, sa, sr)
        pos += 1
    sa0, sr0, la0, lr0 = prompt_state
    ga = _greedy(artifact, sa0, la0, len(prompt), greedy_tokens)
    gr = _greedy(reference, sr0, lr0, len(prompt), greedy_tokens)
    common = next((i for i, (x, y) in enumerate(zip(ga, gr)) if x != y), min(len(ga), len(gr)))
    greedy = {"tokens": greedy_tokens, "common_prefix": common, "artifact_ids": ga, "reference_ids": gr}
    return cmp, greedy


def _worst(values: list[float], high: bool = True) -> int:
    """Index of the worst value (largest, or smallest when ``high`` is False); NaN is the worst of all."""

    def key(k: int) -> float:
        v = values[k]
        return float("inf") if v != v else (v if high else -v)

    return max(range(len(values)), key=key, default=0)


def summarize(cmp: _Comparator, greedy: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Summary metrics and, for each, where its worst value occurred."""
    pos, steps = cmp.pos, cmp.steps
    if not steps:
        raise RgMobileError("validate: nothing was run (empty prompt and no decode steps)")
    i_abs = _worst(pos["max_abs_logits"])
    i_cos = _worst(pos["cosine"], high=False)
    s_rel = _worst([s.max_rel_logits for s in steps])
    s_state = _worst([s.max_state_abs for s in steps])
    mism = [p for p, m in zip(pos["position"], pos["top1_match"]) if not m]
    tokens = greedy["tokens"]
    nan_at = cmp.nonfinite_position
    nonfinite = "" if nan_at is None else f"; the artifact produced NaN/Inf logits from position {nan_at}"
    summary = {
        "max_abs_logits": pos["max_abs_logits"][i_abs],
        "max_rel_logits": steps[s_rel].max_rel_logits,
        "min_cosine": pos["cosine"][i_cos],
        "max_state_abs": steps[s_state].max_state_abs,
        "top1_agreement": float(np.mean(pos["top1_match"])),
        "greedy_match": greedy["common_prefix"] / tokens if tokens else 1.0,
        "greedy_common_prefix": greedy["common_prefix"],
        "greedy_tokens": tokens,
        "positions": len(pos["position"]),
    }
    where = {
        "max_abs_logits": f"worst at position {pos['position'][i_abs]}{nonfinite}",
        "max_rel_logits": f"worst in the step starting at position {steps[s_rel].start}",
        "min_cosine": f"worst at position {pos['position'][i_cos]}",
        "max_state_abs": f"worst: {steps[s_state].worst_state} after the step starting at {steps[s_state].start}",
        "top1_agreement": f"first mismatch at position {mism[0]}" if mism else "",
        "greedy_match": f"greedy continuations agree on {greedy['common_prefix']} of {tokens} tokens",
    }
    return summary, where


def check(summary: dict[str, Any], where: dict[str, str], thresholds: dict[str, float]) -> list[Failure]:
    out = []
    for metric, bound in METRICS.items():
        if metric in thresholds and exceeded(metric, float(summary[metric]), thresholds[metric]):
            out.append(Failure(metric, float(summary[metric]), thresholds[metric], bound, where.get(metric, "")))
    return out


def validate(options: ValidateOptions) -> ValidationReport:
    """Run the artifact and the reference side by side; write the report/plot if asked."""
    from exporter.checkpoint.loader import load_checkpoint
    from runtime_py.tokenizer import Tokenizer
    from runtime_py.torch_backend import TorchBackend

    artifact = Path(options.artifact)
    manifest = read_manifest(artifact)  # structural problems raise here (exit 2)
    thresholds = thresholds_for(manifest.format, manifest.precision)
    ckpt_path = options.checkpoint or (Path(manifest.source_checkpoint) if manifest.source_checkpoint else None)
    if ckpt_path is None:
        raise RgMobileError(f"{artifact}: the manifest names no source checkpoint; pass --checkpoint")
    ckpt = load_checkpoint(Path(ckpt_path))
    if ckpt.config != manifest.config:
        raise RgMobileError(
            f"checkpoint {ckpt_path} does not match the artifact's config (different architecture); "
            "pass the checkpoint it was exported from with --checkpoint"
        )
    checks: list[dict[str, str]] = []
    emulated = False  # Core ML off macOS: the saved programs run in the emulator
    # Exported from a quantized checkpoint: its integers are checked against that checkpoint's
    # (below, when it is the reference), not against a re-quantization of its weights.
    given = bool(((manifest.quantization or {}).get(manifest.format) or {}).get("given"))
    if manifest.format == "coreml":
        from runtime_py import validate_coreml

        checks.append(validate_coreml.spec_check(artifact, manifest))
        emulated = not validate_coreml.predictions_possible()
    if emulated:
        # No Core ML runtime here: emulate the saved programs, check the pre-conversion ones, and say so.
        backend = validate_coreml.emulated_backend(artifact, manifest)
        program, program_precision = validate_coreml.program_backend(manifest, ckpt.model)
        if manifest.quantization is not None and not given:  # the quantization, on the weights shipped
            shipped_check, _ = validate_coreml.shipped_weights(artifact, manifest, ckpt.model, options.threads)
            checks.append(shipped_check)
    else:
        backend = open_artifact_backend(artifact, manifest, options.threads)
    if manifest.quantization is not None and ckpt.quantization is not None:
        from runtime_py.validate_integers import integers_check

        checks.append(integers_check(artifact, manifest, ckpt.quantization, ckpt.model))
    reference = TorchBackend(ckpt.model, threads=options.threads)
    window, chunk = manifest.config.window, manifest.prefill_chunk
    length = options.prompt_tokens or (2 * chunk + max(1, chunk // 4 + 1) if chunk > 1 else 8)
    steps = 3 * window if options.steps is None else options.steps
    prompt = prompt_ids(Tokenizer(artifact / manifest.tokenizer_file), length)
    log.info("validate %s: %d prompt tokens (chunk %d), %d decode steps", artifact, length, chunk, steps)
    cmp, greedy = compare(backend, reference, prompt, steps, options.greedy_tokens, options.seed)
    summary, where = summarize(cmp, greedy)
    failures = check(summary, where, thresholds)
    if emulated:
        checks.insert(1, validate_coreml.emulated_check(summary, bool(failures), manifest.precision))
        p_cmp, p_greedy = compare(program, reference, prompt, steps, options.greedy_tokens, options.seed)
        p_summary, p_where = summarize(p_cmp, p_greedy)
        p_failed = check(p_summary, p_where, thresholds_for(manifest.format, program_precision))
        checks.insert(2, validate_coreml.program_check(p_summary, bool(p_failed)))
        checks.append(validate_coreml.predictions_not_run())
    quality = None  # scored on ``backend``: for Core ML off macOS, the emulated programs as shipped
    if options.quality if options.quality is not None else manifest.quantization is not None:
        from runtime_py.quality import QualityOptions, evaluate_quality, failed_metrics

        qopts = QualityOptions(text=options.text, max_tokens=options.quality_tokens)
        quality = evaluate_quality(backend, reference, manifest, artifact, Path(ckpt_path), qopts, PROMPT_TEXT)
        failures += [Failure(m, v, t, b, f"quality on {quality.text}") for m, v, t, b in failed_metrics(quality)]
    report = ValidationReport(
        artifact=str(artifact), format=manifest.format, precision=manifest.precision, checkpoint=str(ckpt_path),
        window=window, prefill_chunk=chunk, prompt_tokens=length, decode_steps=steps, thresholds=thresholds,
        summary=summary, failures=failures, steps=cmp.steps, positions=cmp.pos,
        greedy=greedy, compared=EMULATED_NAME if emulated else backend.name, checks=checks,
    )  # fmt: skip
    if quality is not None:
        report.quality = quality.to_dict()
    if options.report is not None:
        write_json(Path(options.report), report.to_dict())
    if options.plot is not None:
        from runtime_py.report_plot import plot_report

        plot_report(report.to_dict(), Path(options.plot))
    return report
