"""The JSON ``rgmobile bench`` writes: schema "rgmobile.bench", version 2, and its checker.

Version 2 added: top-level "int8_gemm", settings.ttft_tokens, per subject "ttft",
"gemm_ops", "pte_bytes", "fp32_weights_bytes", "rss_before_load_bytes", per position
"prefill_gemm_ops_per_s", "prefill_gemm_fraction", "resident_bytes" and
"resident_roofline_fraction", and the summary/goal entries that read them.

Top level (all keys required; "|null" marks nullable values):

  schema          "rgmobile.bench"
  schema_version  2 (a reader refuses a newer version)
  rgmobile_version, created (ISO 8601 UTC)
  machine         {"platform", "python", "cpu_count", "cpu": {"model", "isa": [flag], "source"},
                   "versions": {package: version}}  ("cpu": runtime_py.machine_load.cpu_info)
  settings        {"positions": [int], "threads", "steps", "warmup", "prefill_chunk",
                   "prefill_repeats", "ttft_tokens" (0: not measured), "busy_core" and "together"
                   (bools; optional, absent from earlier version 2 files), "seed", "baselines": [str],
                   "shape": str|null, "baseline_config": GriffinConfig dict|null}
  bandwidth       runtime_py.bandwidth.Bandwidth.to_dict(): {"method", "threads", "array_bytes",
                   "repeats", "best_gb_s", "median_gb_s", "samples_gb_s": [float]}
  int8_gemm       runtime_py.gemm_peak.GemmPeak.to_dict() | null (--gemm-m 0): {"method", "kernel"
                   (onnxruntime's kernel and version), "threads", "shape": {"m", "k", "n"}, "ops"
                   (2*m*k*n), "repeats", "best_ops_per_s", "median_ops_per_s", "samples_seconds"}
  subjects        [subject], artifacts first, in command-line order, then baselines
  goals           [goal] (runtime_py.bench_goals)

subject:
  name            artifact folder name (made unique) or the baseline name
  kind            "artifact" | "baseline"
  path            artifact folder | null
  format          manifest format ("onnx", ...) | null for baselines
  error           null, or why this subject could not be measured (then the
                  measurement keys below may be missing)
  load            {"before", "after"}: runtime_py.machine_load.load_sample() just before and
                  after the subject's process ({"loadavg_1m", "busy_cores"}: cores busy with
                  other work while bench idled; >= 0.5 is logged as a warning)
  backend, precision, config (GriffinConfig dict)
  quantization    (optional; absent from earlier version 2 files) the artifact's recipe from its
                  manifest ({"name", "linears", "embedding", "rglru_gates", "activations"}: each
                  scheme's bits, granularity and group size) | null (unquantized, baselines)
  weights_bytes, weights_bytes_method   what one decode step reads for its weights
  load_seconds, rss_before_load_bytes (v2), anon_before_load_bytes (optional), rss_after_load_bytes,
                  peak_rss_bytes (ru_maxrss of the subject's own process)
  program_loading "together" (baselines) or "one at a time (decode, then prefill)" (artifacts:
                  decode speed and RSS are measured with the decode program alone loaded)
  export_stats    manifest format_details.export_stats | null
  gemm_ops        how prefill's linear ops are counted (artifacts with a prefill program) | null:
                  {"body_ops_per_token" (2 x multiply-accumulates of every weight matmul but the
                  head, runtime_py.bench.linear_ops_per_token), "head_ops" (2 x vocab x width),
                  "head_every_position" (false when the prefill program returns only the last
                  position's logits), "note"}
  pte_bytes       size of an ExecuTorch artifact's .pte file(s) and .ptd data file | null
  fp32_weights_bytes  4 x the config's parameters (tied table once) for artifacts | null
  ttft            time to first token of a long prompt (artifacts; null for baselines or
                  --ttft-tokens 0): {"tokens", "seconds", "prefill_chunk", "prefill_steps",
                  "tail_tokens" (optional: the remainder run as prefill calls, 0: none),
                  "tail_calls" (optional: those calls' lengths, e.g. [16, 8] or [31]),
                  "prefill_seconds", "decode_steps", "decode_seconds", "method"}; split as
                  the generation loop splits a prompt (prefill chunks, the remainder as calls
                  of the lengths the programs run, longest first, else decode steps)
  contention      (optional; absent from earlier version 2 files) null, or with --busy-core
                  (artifacts; runtime_py.bench_contention): {"position" (the first), "hog" (what kept
                  a core busy), "rows": [{"spin", "busy" (bools), "busy_cores_before" (load sample
                  with the hog running)|null, "tokens_per_s"|null, "p10_tokens_per_s",
                  "p90_tokens_per_s", "error"|null}], "busy_over_quiet" (decode tok/s with the busy
                  core / without, spinning threads), "busy_over_quiet_no_spin", "no_spin_over_spin_busy"
                  (busy decode without / with spinning); each ratio null where not measured}
  together        (optional; absent from earlier version 2 files) null, or with --together
                  (artifacts; a worker process of its own): every program loaded at once, as
                  ``generate`` loads them, decoding at the first position after one prefill chunk:
                  {"error": why} when it failed, else {"position", "rss_before_load_bytes",
                  "rss_bytes", "held_bytes" (rss_bytes - rss_before_load_bytes), "held_over_weights"
                  (÷ weights_bytes), "anon_held_bytes" (RssAnon gained) | null, "tokens_per_s"}
  positions       one row per settings.positions entry:
    position, state_bytes, rss_bytes (current RSS after measuring; three untimed state swaps at the
                    first position precede the first row, so that the allocator is at its plateau),
                    peak_rss_bytes,
    decode          {"tokens_per_s" (median), "p10_tokens_per_s", "p90_tokens_per_s",
                     "steps", "step_seconds": [float]}
    prefill         {"chunk", "tokens_per_s", "repeats", "step_seconds": [float]} | null
    bytes_per_token weights_bytes + state read and written (Gemma: + its KV cache at p)
    roofline_tokens_per_s   bandwidth.best_gb_s / bytes_per_token
    roofline_fraction       decode.tokens_per_s / roofline_tokens_per_s
    prefill_gemm_ops_per_s  prefill.tokens_per_s x linear ops per token (the head per
                            position, or once per chunk: see gemm_ops) | null
    prefill_gemm_fraction   prefill_gemm_ops_per_s / int8_gemm.best_ops_per_s | null
    prefill_over_decode_ceiling  (optional; absent from earlier version 2 files) int8_gemm.best_ops_per_s
                            / (prefill_gemm_ops_per_s / prefill.tokens_per_s) / roofline_tokens_per_s:
                            prefill at the GEMM peak over decode at the roofline | null
    resident_bytes          rss_bytes - rss_before_load_bytes: what the process holds for the
                            program (weights in the runtime's layout, buffers, state) | null
    anon_bytes, resident_anon_bytes  (optional; absent from earlier version 2 files) the anonymous
                            part of rss_bytes (RssAnon), and it less the subject's
                            anon_before_load_bytes: the held bytes without the file-backed pages of
                            mapped model files (clean, which the kernel may drop and re-read) | null
    resident_roofline_fraction  decode.tokens_per_s / (bandwidth / (resident_bytes + 2 x state))
                            | null: the ceiling counted from the weights as the runtime holds them
                            (an upper estimate of the bytes a step reads, so the higher fraction)
  summary         runtime_py.bench_goals.summarize()

goal: {"goal", "subject": str|null, "value": float|null, "target": float,
       "comparison": ">=" | "<=" | "<", "met": bool|null, "note": str}
"""

from __future__ import annotations

from typing import Any

from exporter.errors import RgMobileError

SCHEMA = "rgmobile.bench"
SCHEMA_VERSION = 2

_NUM = (int, float)
_NONE = type(None)
_TOP = {
    "schema": str, "schema_version": int, "rgmobile_version": str, "created": str, "machine": dict,
    "settings": dict, "bandwidth": dict, "subjects": list, "goals": list,
}  # fmt: skip
_SETTINGS = {
    "positions": list, "threads": int, "steps": int, "warmup": int, "prefill_chunk": int,
    "prefill_repeats": int, "seed": int, "baselines": list,
}  # fmt: skip
# added in version 2 (a version 1 file is still read without them)
_TOP_2 = {"int8_gemm": (dict, _NONE)}
_SETTINGS_2 = {"ttft_tokens": int}
_SUBJECT_2 = {"ttft": (dict, _NONE), "gemm_ops": (dict, _NONE), "rss_before_load_bytes": int}
_ROW_2 = {
    "prefill_gemm_ops_per_s": (*_NUM, _NONE), "prefill_gemm_fraction": (*_NUM, _NONE),
    "resident_bytes": (int, _NONE), "resident_roofline_fraction": (*_NUM, _NONE),
}  # fmt: skip
_ROW_OPTIONAL = {"prefill_over_decode_ceiling": (*_NUM, _NONE)}  # checked where present
_GEMM = {"kernel": str, "threads": int, "shape": dict, "ops": int, "best_ops_per_s": _NUM, "median_ops_per_s": _NUM}
_TTFT = {"tokens": int, "seconds": _NUM}
_TOGETHER = {
    "position": int, "rss_before_load_bytes": int, "rss_bytes": int, "held_bytes": int, "held_over_weights": _NUM,
    "anon_held_bytes": (int, _NONE), "tokens_per_s": _NUM,
}  # fmt: skip
_BANDWIDTH = {"threads": int, "array_bytes": int, "best_gb_s": _NUM, "median_gb_s": _NUM, "samples_gb_s": list}
_SUBJECT = {
    "name": str, "kind": str, "backend": str, "precision": str, "config": dict, "weights_bytes": int,
    "weights_bytes_method": str, "load_seconds": _NUM, "peak_rss_bytes": int, "positions": list, "summary": dict,
    "program_loading": str,
}  # fmt: skip
_ROW = {
    "position": int, "state_bytes": int, "rss_bytes": int, "peak_rss_bytes": int, "decode": dict,
    "bytes_per_token": int, "roofline_tokens_per_s": _NUM, "roofline_fraction": _NUM,
}  # fmt: skip
_DECODE = {"tokens_per_s": _NUM, "p10_tokens_per_s": _NUM, "p90_tokens_per_s": _NUM, "steps": int}
_CONTENTION_ROW = {"tokens_per_s": (*_NUM, _NONE)}
_GOAL = {"goal": str, "target": _NUM, "comparison": str, "note": str}


def _check(obj: Any, fields: dict[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise RgMobileError(f"bench json: {where} must be an object")
    for key, types in fields.items():
        if key not in obj:
            raise RgMobileError(f"bench json: {where} is missing {key!r}")
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise RgMobileError(f"bench json: {where}.{key} has type {type(value).__name__}")


def _check_contention(entry: Any, where: str) -> None:
    _check(entry, {"position": int, "rows": list}, where)
    for k, row in enumerate(entry["rows"]):
        _check(row, _CONTENTION_ROW, f"{where}.rows[{k}]")
        if not isinstance(row.get("spin"), bool) or not isinstance(row.get("busy"), bool):
            raise RgMobileError(f"bench json: {where}.rows[{k}].spin and .busy must be true or false")


def validate_bench(data: Any) -> None:
    """Raise :class:`RgMobileError` naming the first field that does not match the file's schema version."""
    _check(data, _TOP, "top level")
    if data["schema"] != SCHEMA:
        raise RgMobileError(f"bench json: schema is {data['schema']!r}, expected {SCHEMA!r}")
    if data["schema_version"] > SCHEMA_VERSION:
        raise RgMobileError(f"bench json: schema_version {data['schema_version']} is newer than {SCHEMA_VERSION}")
    v2 = data["schema_version"] >= 2
    _check(data, _TOP_2 if v2 else {}, "top level")
    _check(data["settings"], {**_SETTINGS, **(_SETTINGS_2 if v2 else {})}, "settings")
    _check(data["bandwidth"], _BANDWIDTH, "bandwidth")
    if v2 and data["int8_gemm"] is not None:
        _check(data["int8_gemm"], _GEMM, "int8_gemm")
    positions = data["settings"]["positions"]
    for i, s in enumerate(data["subjects"]):
        where = f"subjects[{i}]"
        if not isinstance(s, dict) or s.get("kind") not in ("artifact", "baseline"):
            raise RgMobileError(f"bench json: {where}.kind must be 'artifact' or 'baseline'")
        if s.get("error") is not None:
            continue
        _check(s, {**_SUBJECT, **(_SUBJECT_2 if v2 else {})}, where)
        if v2 and s["ttft"] is not None:
            _check(s["ttft"], _TTFT, f"{where}.ttft")
        if s.get("quantization") is not None:
            _check(s["quantization"], {"name": str}, f"{where}.quantization")
        if s.get("contention") is not None:
            _check_contention(s["contention"], f"{where}.contention")
        if s.get("together") is not None and s["together"].get("error") is None:
            _check(s["together"], _TOGETHER, f"{where}.together")
        if [r.get("position") for r in s["positions"]] != positions:
            raise RgMobileError(f"bench json: {where} positions differ from settings.positions")
        for j, row in enumerate(s["positions"]):
            _check(row, {**_ROW, **(_ROW_2 if v2 else {})}, f"{where}.positions[{j}]")
            _check(row, {k: t for k, t in _ROW_OPTIONAL.items() if k in row}, f"{where}.positions[{j}]")
            _check(row["decode"], _DECODE, f"{where}.positions[{j}].decode")
            if row.get("prefill") is not None:
                _check(row["prefill"], {"chunk": int, "tokens_per_s": _NUM}, f"{where}.positions[{j}].prefill")
    for i, g in enumerate(data["goals"]):
        _check(g, _GOAL, f"goals[{i}]")
        if g.get("met") not in (True, False, None):
            raise RgMobileError(f"bench json: goals[{i}].met must be true, false or null")
