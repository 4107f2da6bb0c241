"""One ``bench`` subject measured in its own process: ``python -m runtime_py.bench_worker SPEC.json OUT.json``.

A fresh process per artifact/baseline gives each its own clean peak RSS
(``ru_maxrss``), unpolluted by the others or by the parent's bandwidth array.
SPEC is a :class:`WorkerSpec` as JSON; OUT receives ``{"ok": true, "result": {...}}``
or ``{"ok": false, "error": "..."}`` (a user error; exit code 2). Any other
failure is a bug: the traceback goes to stderr and the parent reports it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.fsio import write_json
from exporter.resources import current_anon_bytes, current_rss_bytes, max_rss_bytes
from runtime_py.backend import plan_chunks
from runtime_py.bench_subjects import BASELINES, BackendSubject, Subject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker measures.

    Fields:
      subject: "artifact" or a baseline name (runtime_py.bench_subjects.BASELINES).
      path: the artifact folder (artifacts only).
      config: GriffinConfig.to_dict() of the baseline shape (baselines only).
      threads: CPU threads of the runtime.
      positions: context positions to measure at (a synthesised state at each).
      steps, warmup: timed decode steps per position, after ``warmup`` untimed ones (and as
        many untimed prefill runs, at least one, before the timed ones).
      prefill_chunk, prefill_repeats: tokens per prefill step (1 = no prefill) and timed repeats.
      seed: seed of the weights (baselines), states and tokens.
      ttft_tokens: prompt length of the time to first token (artifacts; 0: not measured).
      spin: let the runtime's idle threads spin-wait (False only for formats with spin_control).
      together: measure only this: every program of the artifact loaded at once, as ``generate``
        loads them, and what the process holds while decoding (artifacts; a worker of its own, so
        that nothing an earlier phase left, such as XNNPACK's weight cache, counts as held before).
    """

    subject: str
    threads: int
    positions: tuple[int, ...]
    steps: int
    warmup: int
    prefill_chunk: int
    prefill_repeats: int
    seed: int = 0
    path: str | None = None
    config: dict[str, Any] | None = None
    ttft_tokens: int = 0
    spin: bool = True
    together: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        data["positions"] = tuple(data["positions"])
        return cls(**data)


def _open_artifact(spec: WorkerSpec, programs: Literal["decode", "prefill"] | None) -> Subject:
    """The artifact with only its ``programs`` loaded: "decode" (t = 1), "prefill" (every program that
    runs a t > 1: the chunk's, and ExecuTorch's or Core ML's ``--prefill-lengths``), None: every
    program, as ``generate``."""
    from exporter.artifact.manifest import read_manifest
    from runtime_py.bandwidth import decode_weight_bytes
    from runtime_py.open import open_artifact_backend

    assert spec.path is not None
    path = Path(spec.path)
    manifest = read_manifest(path, verify=False)  # hashing GBs of weights is validate's job, not bench's
    only = manifest
    if programs is not None:
        if programs == "decode":
            name, program = manifest.program_for(1)
            chosen = {name: program}
        else:
            chosen = {n: p for n, p in manifest.programs.items() if p.seq_len > 1}
        only = dataclasses.replace(manifest, programs=chosen, prefill_chunk=max(p.seq_len for p in chosen.values()))
    backend = open_artifact_backend(path, only, threads=spec.threads, spin=spec.spin)
    kv = next(s for s in manifest.io.state_inputs if s.field in ("key", "conv_state"))
    return BackendSubject(
        backend, manifest.precision, decode_weight_bytes(path, manifest), 2 if kv.dtype == "float16" else 4
    )


def build_subject(spec: WorkerSpec) -> Subject:
    import torch

    torch.set_num_threads(spec.threads)
    if spec.subject == "artifact":
        return _open_artifact(spec, "decode")
    if spec.subject not in BASELINES or spec.config is None:
        raise RgMobileError(f"bench worker: unknown subject {spec.subject!r}; valid: artifact, {list(BASELINES)}")
    config = GriffinConfig.from_dict(spec.config)
    if spec.subject == "eager":
        from runtime_py.bench_subjects import eager_subject

        return eager_subject(config, spec.seed, spec.threads)
    if spec.subject == "transformers":
        from runtime_py.bench_subjects import TransformersRecurrentGemma

        return TransformersRecurrentGemma(config, spec.threads)
    from runtime_py.bench_subjects import TransformersGemma

    return TransformersGemma(config, spec.threads, max(spec.positions) + spec.warmup + spec.steps + spec.prefill_chunk)


def _rss() -> int:
    """Current RSS; where /proc is missing (macOS) the peak so far stands in."""
    return current_rss_bytes() or max_rss_bytes()


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def decode_summary(step_seconds: list[float]) -> dict[str, Any]:
    """tokens/s: median over steps, and the p10/p90 spread (of tokens/s, so p10 <= median <= p90)."""
    rates = [1.0 / s for s in step_seconds]
    return {
        "tokens_per_s": 1.0 / statistics.median(step_seconds),
        "p10_tokens_per_s": _percentile(rates, 10),
        "p90_tokens_per_s": _percentile(rates, 90),
        "steps": len(step_seconds),
        "step_seconds": [round(s, 6) for s in step_seconds],
    }


def _phases(spec: WorkerSpec) -> list[tuple[Callable[[], Subject], bool, bool]]:
    """(load the subject, measure decode with it, measure prefill with it), in order.

    An artifact's programs are loaded one at a time: onnxruntime gives every
    session its own copy of the weights, so decode and prefill sessions together
    would double the RSS (21 GB for fp32 at the 2B shape). Decode speed and RSS
    are measured with the decode program alone, then prefill with the prefill
    programs alone (the chunk's, and any shorter fixed lengths the TTFT prompt's
    remainder runs). A baseline is one model that runs any step length.
    """
    if spec.subject != "artifact":
        return [(lambda: build_subject(spec), True, spec.prefill_chunk > 1)]
    phases: list[tuple[Callable[[], Subject], bool, bool]] = [(lambda: _open_artifact(spec, "decode"), True, False)]
    if spec.prefill_chunk > 1:
        phases.append((lambda: _open_artifact(spec, "prefill"), False, True))
    return phases


def _prefill(subject: Subject, spec: WorkerSpec, rng: np.random.Generator) -> dict[str, Any] | None:
    chunk = rng.integers(min(4, subject.config.vocab_size - 1), subject.config.vocab_size, spec.prefill_chunk)
    # warm-up runs as for decode (at least one): onnxruntime's first two prefill runs of a 2B
    # program took 2x the steady time (allocations, first touch of the prepacked weights)
    warmup = max(1, spec.warmup)
    times = [subject.prefill(chunk) for _ in range(spec.prefill_repeats + warmup)][warmup:]
    done = [t for t in times if t is not None]
    if len(done) != len(times):
        return None
    return {
        "chunk": spec.prefill_chunk,
        "tokens_per_s": spec.prefill_chunk / statistics.median(done),
        "repeats": len(done),
        "step_seconds": [round(t, 6) for t in done],
    }


def _settle(subject: Subject, spec: WorkerSpec, swaps: int = 3) -> None:
    """A few untimed state swaps at the first position before the measured rows, so that every
    position's RSS is read with the allocator at its plateau. Each new state frees the previous
    one; after the first frees of multi-MB arrays glibc raises its mmap threshold and keeps later
    frees on its heap, which held ~70 MB more after two or three swaps at the 2B shape, then
    stayed flat to 32k (docs/performance.md): without them the first row's RSS read low. The
    first position only, so that a cache growing with p (the Gemma baseline) is not touched."""
    token = np.full(max(1, spec.warmup), min(4, subject.config.vocab_size - 1))
    for _ in range(swaps):
        subject.set_position(spec.positions[0], spec.seed)
        subject.decode(token)


@dataclass(frozen=True)
class TtftPlan:
    """How the generation loop runs a ``ttft_tokens`` prompt (:func:`runtime_py.backend.plan_chunks`):
    whole prefill chunks, then the remainder as prefill calls shorter than the chunk (``tail``, their
    lengths: one call where the prefill program runs any t, a manifest ``min_seq_len``; a few where an
    ExecuTorch or Core ML export has ``--prefill-lengths``) and ``steps`` decode steps for what is left."""

    chunks: int = 0
    tail: tuple[int, ...] = ()
    steps: int = 0

    @property
    def empty(self) -> bool:
        return self.chunks + len(self.tail) + self.steps == 0

    @property
    def tail_tokens(self) -> int:
        return sum(self.tail)


def _ttft_plan(spec: WorkerSpec) -> TtftPlan:
    if spec.subject != "artifact" or spec.ttft_tokens < 1 or spec.path is None:
        return TtftPlan()
    from exporter.artifact.manifest import read_manifest

    # the lengths the artifact's programs run, as generate plans a prompt (spec.prefill_chunk is its chunk)
    steps = plan_chunks(spec.ttft_tokens, read_manifest(Path(spec.path), verify=False).seq_lens())
    chunks = sum(1 for n in steps if n == spec.prefill_chunk > 1)
    tail = tuple(n for n in steps if 1 < n < spec.prefill_chunk)
    return TtftPlan(chunks, tail, len(steps) - chunks - len(tail))


def _ttft(spec: WorkerSpec, plan: TtftPlan, seconds: dict[str, float]) -> dict[str, Any] | None:
    if plan.empty:
        return None
    return {
        "tokens": spec.ttft_tokens, "seconds": seconds["prefill"] + seconds["decode"],
        "prefill_chunk": spec.prefill_chunk, "prefill_steps": plan.chunks,
        "tail_tokens": plan.tail_tokens, "tail_calls": list(plan.tail),
        "prefill_seconds": seconds["prefill"], "decode_steps": plan.steps, "decode_seconds": seconds["decode"],
        "method": "from position 0: the prefill chunks (and the remainder as prefill calls of the lengths the "
        "programs run) from the empty state, then any remainder's decode steps from a synthesised "
        "state at their position (one program loaded at a time); model loading excluded",
    }  # fmt: skip


def measure(spec: WorkerSpec) -> dict[str, Any]:
    """Load the subject, then decode (and prefill) from a synthesised state at each position."""
    import torch

    torch.set_num_threads(spec.threads)
    if spec.together:
        return {"together": _together(spec)}
    rows: list[dict[str, Any]] = [{"position": p, "prefill": None} for p in spec.positions]
    info: dict[str, Any] = {}
    chunk, plan = spec.prefill_chunk, _ttft_plan(spec)
    ttft_ids: np.ndarray | None = None
    ttft_seconds = {"prefill": 0.0, "decode": 0.0}
    phases = _phases(spec)
    for load, do_decode, do_prefill in phases:
        gc.collect()
        before = _rss()  # what the process holds before the program: the runtime's own libraries
        anon_before = current_anon_bytes()
        t0 = time.perf_counter()
        subject = load()
        if do_decode:
            weights, how = subject.weights_bytes()
            info = {
                "backend": subject.backend, "precision": subject.precision, "config": subject.config.to_dict(),
                "weights_bytes": weights, "weights_bytes_method": how,
                "load_seconds": round(time.perf_counter() - t0, 3), "rss_before_load_bytes": before,
                "anon_before_load_bytes": anon_before,
                "rss_after_load_bytes": _rss(),
                "program_loading": "together" if len(phases) == 1 else "one at a time (decode, then prefill)",
            }  # fmt: skip
        if do_decode:
            _settle(subject, spec)
        rng = np.random.default_rng(spec.seed)
        for row in rows:
            p = row["position"]
            subject.set_position(p, spec.seed)
            if do_decode:
                tokens = rng.integers(min(4, subject.config.vocab_size - 1), subject.config.vocab_size,
                                      spec.warmup + spec.steps)  # fmt: skip
                row["decode"] = decode_summary(subject.decode(tokens)[spec.warmup :])
                row.update(state_bytes=subject.state_bytes(p), rss_bytes=_rss(), peak_rss_bytes=max_rss_bytes(),
                           anon_bytes=current_anon_bytes())  # fmt: skip
                log.info("%s at %d: %.3g tok/s decode", spec.subject, p, row["decode"]["tokens_per_s"])
            if do_prefill:
                row["prefill"] = _prefill(subject, spec, rng)
        if not plan.empty and isinstance(subject, BackendSubject):
            if ttft_ids is None:
                v = subject.config.vocab_size
                ttft_ids = np.random.default_rng(spec.seed + 1).integers(min(4, v - 1), v, spec.ttft_tokens)
            prefilled = chunk * plan.chunks + plan.tail_tokens
            if do_decode and plan.steps:  # a remainder the prefill program does not run
                subject.set_position(prefilled, spec.seed)
                ttft_seconds["decode"] = subject.run_steps(ttft_ids[prefilled:], [1] * plan.steps)
            if do_prefill and prefilled:
                subject.set_position(0, spec.seed)  # position 0: the empty state
                lengths = [chunk] * plan.chunks + list(plan.tail)
                ttft_seconds["prefill"] = subject.run_steps(ttft_ids[:prefilled], lengths)
        del subject
        gc.collect()
    ttft = _ttft(spec, plan, ttft_seconds)
    if ttft is not None:
        log.info("%s: first token after %d prompt tokens in %.3g s", spec.subject, ttft["tokens"], ttft["seconds"])
    return {**info, "peak_rss_bytes": max_rss_bytes(), "positions": rows, "ttft": ttft}


def _together(spec: WorkerSpec) -> dict[str, Any]:
    """Every program of the artifact loaded at once, as ``generate`` loads them: what the process
    holds while decoding at the first position (after one prefill chunk, so both programs ran)."""
    if spec.subject != "artifact":
        raise RgMobileError(f"bench worker: 'together' measures artifacts, not {spec.subject!r}")
    gc.collect()
    before, anon_before = _rss(), current_anon_bytes()
    subject = _open_artifact(spec, None)
    assert isinstance(subject, BackendSubject)
    subject.set_position(spec.positions[0], spec.seed)
    if spec.prefill_chunk > 1:
        subject.prefill(np.full(spec.prefill_chunk, min(4, subject.config.vocab_size - 1)))
    _settle(subject, spec)
    rng = np.random.default_rng(spec.seed)
    tokens = rng.integers(min(4, subject.config.vocab_size - 1), subject.config.vocab_size, spec.warmup + spec.steps)
    decode = decode_summary(subject.decode(tokens)[spec.warmup :])
    rss, anon = _rss(), current_anon_bytes()
    weights, _ = subject.weights_bytes()
    del subject
    gc.collect()
    return {
        "position": spec.positions[0], "rss_before_load_bytes": before, "rss_bytes": rss,
        "held_bytes": rss - before, "held_over_weights": (rss - before) / weights,
        "anon_held_bytes": anon - anon_before if anon is not None and anon_before is not None else None,
        "tokens_per_s": decode["tokens_per_s"],
    }  # fmt: skip


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(argv) != 2:
        sys.stderr.write("usage: python -m runtime_py.bench_worker SPEC.json OUT.json\n")
        return 2
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    try:
        result = measure(WorkerSpec.from_json(spec_path.read_text()))
    except RgMobileError as exc:
        write_json(out_path, {"ok": False, "error": str(exc)})
        return 2
    write_json(out_path, {"ok": True, "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
