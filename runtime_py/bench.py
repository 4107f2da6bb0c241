"""``rgmobile bench``: decode/prefill speed, memory and the bandwidth roofline of artifacts and baselines.

One run measures, on this machine and at the same thread count:

1. the streaming read bandwidth (:mod:`runtime_py.bandwidth`) and the int8 GEMM peak
   (:mod:`runtime_py.gemm_peak`), in this process;
2. every artifact and every baseline (:mod:`runtime_py.bench_subjects`), each in its
   own child process (:mod:`runtime_py.bench_worker`) so each gets a clean peak RSS:
   decode tokens/s (median, p10/p90) and prefill tokens/s from a synthesised state
   at each context position (:mod:`runtime_py.bench_state`), RSS at each position, and
   for artifacts the time to first token of a long prompt (once, from position 0);
3. per position, the bytes one decode step reads and the roofline fraction, and the
   prefill's linear-layer ops/s and its fraction of the int8 GEMM peak;
4. the performance goals (:mod:`runtime_py.bench_goals`).

The result is a dict in the versioned schema of :mod:`runtime_py.bench_schema`,
written atomically as JSON, optionally drawn as a PNG (:mod:`runtime_py.bench_plot`).
This module logs; the CLI prints the table.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.artifact.manifest import Manifest
from exporter.config import GriffinConfig, preset
from exporter.errors import RgMobileError
from exporter.formats import get_format
from exporter.fsio import write_json
from runtime_py.bandwidth import measure_bandwidth, roofline
from runtime_py.bench_contention import measure_contention
from runtime_py.bench_goals import compute_goals, summarize
from runtime_py.bench_schema import SCHEMA, SCHEMA_VERSION, validate_bench
from runtime_py.bench_subjects import BASELINES
from runtime_py.bench_worker import WorkerSpec
from runtime_py.gemm_peak import DEFAULT_SHAPE, GemmPeak, measure_int8_gemm
from runtime_py.machine_load import cpu_info, disturbed, load_sample

log = logging.getLogger(__name__)

DEFAULT_POSITIONS = (0, 2048, 8192, 32768)
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BenchOptions:
    """What to benchmark (Typer options of ``rgmobile bench`` map 1:1 to these).

    Fields:
      artifacts: exported artifact folders, each measured in its own process.
      out: the JSON result (written atomically).
      positions: context positions; decode runs from a synthesised state at each.
      threads: CPU threads for every runtime and the bandwidth measurement (None: all cores).
      steps: timed decode steps per position, after ``warmup`` untimed steps.
      prefill_chunk: tokens per prefill step of the baselines (None: the artifacts'
        largest prefill_chunk, or 32); artifacts use their own prefill program.
      prefill_repeats: timed prefill steps per position (after one warm-up).
      baselines: any of "transformers", "eager", "gemma" (runtime_py.bench_subjects).
      shape: preset of the baselines (None: the first artifact's config).
      seed: seed of baseline weights, synthesised states and tokens.
      bandwidth_mib: size of the array summed for the bandwidth (far above the caches).
      bandwidth_repeats: bandwidth repeats (best and median are reported).
      plot: write a PNG here (tokens/s and RSS against position).
      timeout: seconds allowed per subject (None: no limit).
      gemm_m: rows (tokens) of the int8 GEMM peak's product; 0 skips it (the GEMM goals
        are then not measured).
      gemm_k, gemm_n: inner and output size of that product (default: a 2B MLP projection).
      gemm_repeats: timed products (best and median are reported).
      ttft_tokens: prompt length of the time-to-first-token measurement of each
        artifact (prefill chunks, then decode steps, from position 0); 0 skips it.
      busy_core: also decode each artifact with another process keeping a core busy, with and
        without spin-waiting threads where the runtime allows it (runtime_py/bench_contention.py).
      together: also load each artifact's programs all at once, as ``generate`` does, in a worker of its own, and record
        what the process holds while decoding (an fp32 2B ONNX artifact would need ~21 GB).
    """

    artifacts: tuple[Path, ...] = ()
    out: Path = Path("bench.json")
    positions: tuple[int, ...] = DEFAULT_POSITIONS
    threads: int | None = None
    steps: int = 32
    warmup: int = 4
    prefill_chunk: int | None = None
    prefill_repeats: int = 3
    baselines: tuple[str, ...] = ("transformers", "eager")
    shape: str | None = None
    seed: int = 0
    bandwidth_mib: int = 512
    bandwidth_repeats: int = 5
    plot: Path | None = None
    timeout: float | None = None
    gemm_m: int = DEFAULT_SHAPE[0]
    gemm_k: int = DEFAULT_SHAPE[1]
    gemm_n: int = DEFAULT_SHAPE[2]
    gemm_repeats: int = 10
    ttft_tokens: int = 2048
    busy_core: bool = False
    together: bool = False

    def __post_init__(self) -> None:
        if not self.positions or any(not isinstance(p, int) or p < 0 for p in self.positions):
            raise RgMobileError(f"--positions must be non-negative integers, got {list(self.positions)}")
        if list(self.positions) != sorted(set(self.positions)):
            raise RgMobileError(f"--positions must be increasing without repeats, got {list(self.positions)}")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise RgMobileError(f"unknown baseline(s) {bad}; valid: {list(BASELINES)}")
        if not self.artifacts and not self.baselines:
            raise RgMobileError("nothing to measure: pass artifact folders and/or --baselines")
        for name, value, low in (
            ("--steps", self.steps, 1), ("--warmup", self.warmup, 0), ("--prefill-repeats", self.prefill_repeats, 1),
            ("--threads", self.threads if self.threads is not None else 1, 1),
            ("--bandwidth-mib", self.bandwidth_mib, 1), ("--bandwidth-repeats", self.bandwidth_repeats, 1),
            ("--prefill-chunk", self.prefill_chunk if self.prefill_chunk is not None else 1, 1),
            ("--gemm-m", self.gemm_m, 0), ("gemm_k", self.gemm_k, 1), ("gemm_n", self.gemm_n, 1),
            ("gemm_repeats", self.gemm_repeats, 1), ("--ttft-tokens", self.ttft_tokens, 0),
        ):  # fmt: skip
            if not isinstance(value, int) or value < low:
                raise RgMobileError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.shape is not None:
            preset(self.shape)  # validates the name

    @property
    def resolved_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "numpy", "onnxruntime", "onnx", "transformers", "executorch", "coremltools"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count() or 0,
        "cpu": cpu_info(),
        "versions": _versions(),
    }


def run_worker(spec: WorkerSpec, timeout: float | None = None) -> dict[str, Any]:
    """Measure one subject in a child process; ``{"error": ...}`` when it could not be measured."""
    env = dict(os.environ)
    threads = str(spec.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="rgmobile-bench-") as d:
        spec_path, out_path = Path(d) / "spec.json", Path(d) / "out.json"
        spec_path.write_text(spec.to_json())
        cmd = [sys.executable, "-m", "runtime_py.bench_worker", str(spec_path), str(out_path)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer is not None:
            timer.start()
        tail: deque[str] = deque(maxlen=8)
        assert proc.stderr is not None
        for line in proc.stderr:  # relay the worker's log; keep the end for error messages
            tail.append(line.rstrip())
            log.debug("worker %s: %s", spec.subject, line.rstrip())
        code = proc.wait()
        if timer is not None:
            timer.cancel()
        if out_path.is_file():
            data = json.loads(out_path.read_text())
            return dict(data["result"]) if data.get("ok") else {"error": str(data.get("error"))}
        why = "killed after the timeout" if timer is not None and code < 0 else f"exit code {code}"
        return {"error": f"the worker crashed ({why}): " + " | ".join(t for t in tail if t)[-600:]}


def measurement_errors(data: dict[str, Any]) -> list[str]:
    """Every measurement of a bench result that failed, as "subject: what failed: why": a subject
    itself, its ``--together`` worker or a ``--busy-core`` variant (the command exits 1 on any)."""
    errors = []
    for s in data["subjects"]:
        if s.get("error") is not None:
            errors.append(f"{s['name']}: {s['error']}")
            continue
        together = s.get("together")
        if together is not None and together.get("error") is not None:
            errors.append(f"{s['name']}: programs together: {together['error']}")
        for row in (s.get("contention") or {}).get("rows", []):
            if row.get("error") is not None:
                errors.append(f"{s['name']}: decode with spin={row['spin']} busy={row['busy']}: {row['error']}")
    return errors


def _bytes_per_token(name: str, weights: int, state_bytes: int, config: dict[str, Any]) -> int:
    """Weights once plus the state read and written; Gemma reads its KV cache and writes one token."""
    if name == "gemma":
        per_token = config["num_layers"] * 2 * config["num_kv_heads"] * (config["width"] // config["num_heads"]) * 4
        return weights + state_bytes + per_token
    return weights + 2 * state_bytes


def head_ops(config: GriffinConfig) -> int:
    """Operations of the tied head for one position: [d] x [d, v]."""
    return 2 * config.vocab_size * config.width


def linear_ops_per_token(config: GriffinConfig, head_every_position: bool) -> int:
    """Operations (2 per multiply-accumulate) of every matmul with a weight, for one token.

    Counted: per recurrent block its x/y branches (d -> l each), output projection (l -> d)
    and the two RG-LRU block-diagonal gates (h blocks of (l/h)^2); per attention block
    q/k/v/o; per block the gated MLP (gate and up d -> f, down f -> d); the tied head
    (d -> v) when ``head_every_position``. Not counted: the Conv1D (depthwise, 4 taps), the
    norms, biases, the embedding lookup and attention's scores (they depend on the context,
    not on weights).
    """
    d, f, l, e = config.width, config.mlp_width, config.lru_width, config.head_dim
    h, k = config.num_heads, config.num_kv_heads
    mlp = 3 * d * f
    recurrent = 2 * d * l + l * d + 2 * h * (l // h) ** 2
    attention = d * h * e + 2 * d * k * e + h * e * d
    n_rec, n_att = len(config.layers_of("recurrent")), len(config.layers_of("attention"))
    macs = n_rec * (recurrent + mlp) + n_att * (attention + mlp)
    return 2 * macs + (head_ops(config) if head_every_position else 0)


def _add_roofline(subject: dict[str, Any], bandwidth_gb_s: float, gemm_ops_per_s: float | None) -> None:
    cfg = dict(subject["config"])
    cfg["num_layers"] = len(cfg["block_types"])
    gemm = subject.get("gemm_ops")
    for row in subject["positions"]:
        bpt = _bytes_per_token(subject["name"], subject["weights_bytes"], row["state_bytes"], cfg)
        row["bytes_per_token"] = bpt
        row["roofline_tokens_per_s"] = roofline(bandwidth_gb_s, bpt)
        row["roofline_fraction"] = row["decode"]["tokens_per_s"] / row["roofline_tokens_per_s"]
        # the same ceiling counted from what the process holds for the program (its weights in the
        # runtime's own layout, e.g. onnxruntime's prepacked int4 blocks with fp32 scales and sums)
        before = subject.get("rss_before_load_bytes")
        resident = row["rss_bytes"] - before if before is not None else None
        row["resident_bytes"] = resident
        anon, anon_before = row.get("anon_bytes"), subject.get("anon_before_load_bytes")
        row["resident_anon_bytes"] = anon - anon_before if anon is not None and anon_before is not None else None
        row["resident_roofline_fraction"] = (
            row["decode"]["tokens_per_s"] / roofline(bandwidth_gb_s, resident + 2 * row["state_bytes"])
            if resident is not None and resident > 0
            else None
        )
        row["prefill_gemm_ops_per_s"] = row["prefill_gemm_fraction"] = None
        row["prefill_over_decode_ceiling"] = None
        pre = row.get("prefill")
        if gemm is not None and pre is not None:
            chunk = pre["chunk"]
            head = gemm["head_ops"] * (chunk if gemm["head_every_position"] else 1)
            ops_per_token = gemm["body_ops_per_token"] + head / chunk
            row["prefill_gemm_ops_per_s"] = pre["tokens_per_s"] * ops_per_token
            if gemm_ops_per_s:
                row["prefill_gemm_fraction"] = row["prefill_gemm_ops_per_s"] / gemm_ops_per_s
                # what this machine allows prefill / decode to be: prefill at the int8 GEMM peak
                # (compute-bound) over decode at the roofline (bandwidth-bound)
                row["prefill_over_decode_ceiling"] = gemm_ops_per_s / ops_per_token / row["roofline_tokens_per_s"]


def _gemm_ops(manifest: Manifest) -> dict[str, Any]:
    """How the bench counts an artifact's prefill linear ops (stored in the subject)."""
    every = not manifest.io.last_logits_only  # logits [batch, 1, vocab]: the head once per chunk
    return {
        "body_ops_per_token": linear_ops_per_token(manifest.config, head_every_position=False),
        "head_ops": head_ops(manifest.config),
        "head_every_position": every,
        "note": "head at every prefill position" if every else "head once per prefill chunk (last logits only)",
    }


# The recipe keys of a manifest's ``quantization`` a bench subject keeps (not the per-format facts).
RECIPE_KEYS = ("name", "linears", "embedding", "rglru_gates", "activations")


def recipe_summary(quantization: dict[str, Any] | None) -> dict[str, Any] | None:
    """The quantization recipe an artifact was exported with (its schemes, e.g. the int4 group
    size), from the manifest's ``quantization``; None for an unquantized artifact."""
    if quantization is None:
        return None
    return {k: quantization[k] for k in RECIPE_KEYS if k in quantization}


def _pte_bytes(path: Path, manifest: Manifest) -> int | None:
    """Size of an ExecuTorch artifact's program: its .pte file(s) (each once) and .ptd data file;
    None for other formats."""
    if manifest.format != "executorch":
        return None
    files = {path / f for f in manifest.program_files()}
    if manifest.data_file is not None:
        files.add(path / manifest.data_file)
    return sum(f.stat().st_size for f in files if f.is_file()) or None


def _plan(options: BenchOptions) -> tuple[list[dict[str, Any]], GriffinConfig | None, int]:
    """(subject stubs with their worker specs, the baseline shape, the baseline prefill chunk)."""
    from exporter.artifact.manifest import read_manifest

    manifests = [(Path(a), read_manifest(Path(a), verify=False)) for a in options.artifacts]
    chunk = options.prefill_chunk or max((m.prefill_chunk for _, m in manifests), default=32)
    shape: GriffinConfig | None = None
    if options.shape is not None:
        shape = preset(options.shape)
    elif manifests:
        shape = manifests[0][1].config
    elif options.baselines:
        raise RgMobileError("baselines need a shape: pass --shape (e.g. 2b) or an artifact folder")
    common = dict(
        threads=options.resolved_threads, positions=options.positions, steps=options.steps, warmup=options.warmup,
        prefill_repeats=options.prefill_repeats, seed=options.seed,
    )  # fmt: skip
    stubs: list[dict[str, Any]] = []
    names: set[str] = set()
    for path, m in manifests:
        name, k = path.resolve().name, 2
        while name in names:
            name, k = f"{path.resolve().name}#{k}", k + 1
        names.add(name)
        spec = WorkerSpec(subject="artifact", path=str(path), prefill_chunk=m.prefill_chunk,
                          ttft_tokens=options.ttft_tokens, **common)  # type: ignore[arg-type]  # fmt: skip
        export_stats = m.format_details.get("export_stats")
        stubs.append({"name": name, "kind": "artifact", "path": str(path), "format": m.format,
                      "export_stats": export_stats, "gemm_ops": _gemm_ops(m) if m.prefill_chunk > 1 else None,
                      "pte_bytes": _pte_bytes(path, m), "precision": m.precision,
                      "quantization": recipe_summary(m.quantization),
                      "fp32_weights_bytes": 4 * m.config.parameter_counts()["total"], "_spec": spec,
                      "_spin_control": get_format(m.format).spin_control})  # fmt: skip
    for b in options.baselines:
        assert shape is not None
        spec = WorkerSpec(subject=b, config=shape.to_dict(), prefill_chunk=chunk, **common)  # type: ignore[arg-type]
        stubs.append({"name": b, "kind": "baseline", "path": None, "format": None, "export_stats": None,
                      "gemm_ops": None, "pte_bytes": None, "fp32_weights_bytes": None, "quantization": None,
                      "_spec": spec})  # fmt: skip
    return stubs, shape, chunk


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the whole benchmark; returns (and writes to ``options.out``) the dict of bench_schema."""
    stubs, shape, chunk = _plan(options)
    threads = options.resolved_threads
    bandwidth = measure_bandwidth(threads, options.bandwidth_mib * 2**20, options.bandwidth_repeats)
    gemm: GemmPeak | None = None
    if options.gemm_m:
        gemm = measure_int8_gemm(threads, options.gemm_m, options.gemm_k, options.gemm_n, options.gemm_repeats)
    subjects = []
    for stub in stubs:
        spec: WorkerSpec = stub.pop("_spec")
        spin_control: bool = stub.pop("_spin_control", False)
        log.info("measuring %s (%s)", stub["name"], stub["kind"])
        before = load_sample()
        if disturbed(before):
            log.warning(
                "another process keeps %.1f of %d cores busy before %s: its figures will be low",
                before["busy_cores"], os.cpu_count() or 1, stub["name"],
            )  # fmt: skip
        result = run_worker(spec, options.timeout)
        after = load_sample()
        subject = {**stub, "error": None, **result, "load": {"before": before, "after": after}, "contention": None,
                   "together": None}  # fmt: skip
        if subject["error"] is None:
            _add_roofline(subject, bandwidth.best_gb_s, gemm.best_ops_per_s if gemm is not None else None)
            subject["summary"] = summarize(subject)
            if options.busy_core and stub["kind"] == "artifact":
                subject["contention"] = measure_contention(spec, spin_control, lambda s: run_worker(s, options.timeout))
            if options.together and stub["kind"] == "artifact":
                together = run_worker(dataclasses.replace(spec, together=True), options.timeout)
                subject["together"] = together.get("together", together)  # or {"error": ...}
        else:
            log.warning("%s could not be measured: %s", stub["name"], subject["error"])
        subjects.append(subject)
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "rgmobile_version": __version__,
        "created": now,
        "machine": _machine(),
        "settings": {
            "positions": list(options.positions),
            "threads": threads,
            "steps": options.steps,
            "warmup": options.warmup,
            "prefill_chunk": chunk,
            "prefill_repeats": options.prefill_repeats,
            "ttft_tokens": options.ttft_tokens,
            "busy_core": options.busy_core,
            "together": options.together,
            "seed": options.seed,
            "baselines": list(options.baselines),
            "shape": options.shape,
            "baseline_config": shape.to_dict() if shape is not None and options.baselines else None,
        },  # fmt: skip
        "bandwidth": bandwidth.to_dict(),
        "int8_gemm": gemm.to_dict() if gemm is not None else None,
        "subjects": subjects,
        "goals": compute_goals(subjects),
    }
    validate_bench(data)
    write_json(Path(options.out), data)
    if options.plot is not None:
        from runtime_py.bench_plot import plot_bench

        plot_bench(data, Path(options.plot))
    return data
