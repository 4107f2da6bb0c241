"""The performance goals, as data, checked against one bench run's numbers.

Each goal entry: ``{"goal", "subject", "value", "target", "comparison", "met", "note"}``;
``met`` is null (and ``value`` usually too) when the run did not measure what
the goal needs (no int4 artifact, no transformers baseline, no export stats, no
int8 GEMM peak, no time to first token, no ExecuTorch fp32 artifact).
Goals concern the exported artifacts; baselines are what they are compared with. An artifact
run by an emulator (Core ML off macOS) is measured but held to no speed goal (``is_emulated``).

Per-subject summaries (``summarize``) are the numbers the goals read:
  decode_tokens_per_s   median over positions of the per-position median
  prefill_tokens_per_s  same for prefill (null without a prefill program)
  roofline_fraction     median over positions of achieved / roofline tokens/s
  resident_roofline_fraction  the same with the bytes the process holds for the program
                        (null when not measured)
  decode_flatness       max over positions of |tok/s(p) / tok/s(p_min) - 1|
  rss_flatness          max over positions of |RSS(p) / RSS(p_min) - 1|
  prefill_gemm_fraction median over positions of prefill linear ops/s / int8 GEMM peak
                        (null without a prefill program or a GEMM peak)
  prefill_over_decode_ceiling  median over positions of (int8 GEMM peak / prefill linear ops
                        per token) / roofline tokens/s: the prefill / decode ratio this machine
                        allows (null as prefill_gemm_fraction), named in that goal's note
  decode_rss_bytes      median over positions of the RSS after decoding there
  decode_resident_bytes the same less the RSS before the program was loaded (the
                        interpreter and the runtime's libraries): what the program holds
  decode_resident_anon_bytes  its anonymous part (null where not measured): without the
                        file-backed pages of the mapped model, which the kernel may drop
  ttft_seconds          seconds to the first token of a ``ttft.tokens`` prompt (null: not measured)
"""

from __future__ import annotations

import statistics
from typing import Any

# goal -> (target, comparison, what it means)
GOALS: dict[str, tuple[float, str, str]] = {
    "int4_roofline_fraction": (0.80, ">=", "int4 decode tok/s as a fraction of bandwidth / bytes per token"),
    "speedup_vs_transformers_fp32": (5.0, ">=", "decode tok/s over transformers eager fp32 decode tok/s"),
    "decode_flatness": (0.05, "<=", "max relative change of decode tok/s from the first to any position"),
    "rss_flatness": (0.05, "<=", "max relative change of RSS from the first to any position"),
    "prefill_over_decode": (10.0, ">=", "prefill tok/s over decode tok/s"),
    "export_peak_rss_bytes": (20e9, "<", "peak RSS of `rgmobile export` (ru_maxrss or sampled), bytes; 20 GB = 20e9"),
    "ttft_seconds": (15.0, "<=", "seconds from the empty state to the first generated token's logits"),
    "prefill_gemm_fraction": (0.5, ">=", "prefill linear-layer ops/s over this machine's int8 GEMM peak"),
    "decode_rss_over_weights": (1.15, "<=", "median decode RSS the program adds over the weight bytes a step reads"),
    "pte_size_over_fp32_weights": (1.01, "<=", ".pte + .ptd size over fp32 weights (4 x parameters, tied table once)"),
}


def _flatness(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2 or not vals[0]:
        return None
    return max(abs(v / vals[0] - 1.0) for v in vals)


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(subject: dict[str, Any]) -> dict[str, Any]:
    rows = subject["positions"]
    decode = [r["decode"]["tokens_per_s"] for r in rows]
    ttft = subject.get("ttft")
    return {
        "decode_tokens_per_s": _median(decode),
        "prefill_tokens_per_s": _median([r["prefill"]["tokens_per_s"] for r in rows if r["prefill"] is not None]),
        "roofline_fraction": _median([r.get("roofline_fraction") for r in rows]),
        "resident_roofline_fraction": _median([r.get("resident_roofline_fraction") for r in rows]),
        "decode_flatness": _flatness(decode),
        "rss_flatness": _flatness([r["rss_bytes"] for r in rows]),
        "prefill_gemm_fraction": _median([r.get("prefill_gemm_fraction") for r in rows]),
        "prefill_over_decode_ceiling": _median([r.get("prefill_over_decode_ceiling") for r in rows]),
        "decode_rss_bytes": _median([r["rss_bytes"] for r in rows]),
        "decode_resident_bytes": _median([r.get("resident_bytes") for r in rows]),
        "decode_resident_anon_bytes": _median([r.get("resident_anon_bytes") for r in rows]),
        "ttft_seconds": ttft["seconds"] if ttft else None,
    }


def _entry(goal: str, subject: str | None, value: float | None, note: str = "") -> dict[str, Any]:
    target, cmp, meaning = GOALS[goal]
    met = None
    if value is not None:
        met = bool(value >= target if cmp == ">=" else value <= target if cmp == "<=" else value < target)
    return {
        "goal": goal, "subject": subject, "value": value, "target": target, "comparison": cmp,
        "met": met, "note": note or meaning,
    }  # fmt: skip


def is_int4(subject: dict[str, Any]) -> bool:
    return "int4" in str(subject.get("precision", "")).lower()


def is_emulated(subject: dict[str, Any]) -> bool:
    """A subject run by an emulator (Core ML off macOS: ``coreml-emulated``): its speed says nothing
    about the runtime it stands in for, so it is measured and shown but not held to the speed goals."""
    return "emulated" in str(subject.get("backend", ""))


def compute_goals(subjects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Goal entries for every artifact that measured successfully (see module docstring)."""
    ok = [s for s in subjects if s.get("error") is None]
    artifacts = [s for s in ok if s["kind"] == "artifact" and not is_emulated(s)]
    hf = next((s for s in ok if s["name"] == "transformers"), None)
    out: list[dict[str, Any]] = []
    int4 = [a for a in artifacts if is_int4(a)]
    for a in int4:
        out.append(_entry("int4_roofline_fraction", a["name"], a["summary"]["roofline_fraction"]))
        out.extend(_int4_goals(a))
    if not int4:
        for goal in ("int4_roofline_fraction", "ttft_seconds", "prefill_gemm_fraction", "decode_rss_over_weights"):
            out.append(_entry(goal, None, None, "not measured: no int4 artifact in this run"))
    for a in artifacts:
        ours = a["summary"]["decode_tokens_per_s"]
        if hf is None:
            note = "not measured: no transformers baseline"
            out.append(_entry("speedup_vs_transformers_fp32", a["name"], None, note))
        else:
            out.append(_entry("speedup_vs_transformers_fp32", a["name"], ours / hf["summary"]["decode_tokens_per_s"]))
        out.append(_entry("decode_flatness", a["name"], a["summary"]["decode_flatness"]))
        out.append(_entry("rss_flatness", a["name"], a["summary"]["rss_flatness"]))
        pre = a["summary"]["prefill_tokens_per_s"]
        if pre is None:
            out.append(_entry("prefill_over_decode", a["name"], None, "not measured: no prefill program"))
        else:
            ceiling = a["summary"].get("prefill_over_decode_ceiling")
            note = "" if ceiling is None else f"{GOALS['prefill_over_decode'][2]}; {ceiling_note(ceiling)}"
            out.append(_entry("prefill_over_decode", a["name"], pre / ours, note))
    for a in (s for s in ok if s["kind"] == "artifact" and is_emulated(s)):
        note = f"not counted: {a.get('backend')} is an emulator, not the device runtime"
        out.append(_entry("speedup_vs_transformers_fp32", a["name"], None, note))
    # The export's own numbers are in the manifest: reported even when the artifact cannot run here (Core ML).
    for a in (s for s in subjects if s["kind"] == "artifact"):
        stats = a.get("export_stats") or {}
        peaks = [int(stats[k]) for k in ("peak_rss_bytes", "sampled_peak_rss_bytes") if stats.get(k) is not None]
        if peaks:
            out.append(_entry("export_peak_rss_bytes", a["name"], float(max(peaks))))
        else:
            out.append(_entry("export_peak_rss_bytes", a["name"], None, "not measured: no export_stats"))
    out.extend(_pte_goals(subjects))
    return out


def ceiling_note(ceiling: float) -> str:
    """What a prefill / decode ratio can reach on this machine, for the goal's note."""
    decode_goal = GOALS["int4_roofline_fraction"][0]
    return (
        f"this machine's ceiling {ceiling:.3g}x (prefill at its int8 GEMM peak, decode at its roofline; "
        f"{ceiling / decode_goal:.3g}x with decode at {decode_goal:.0%} of it)"
    )


def _int4_goals(a: dict[str, Any]) -> list[dict[str, Any]]:
    """Time to first token, prefill's share of the GEMM peak and decode RSS over the weights."""
    summary, ttft = a["summary"], a.get("ttft")
    out = []
    if ttft:
        note = f"first token of a {ttft['tokens']}-token prompt"
        out.append(_entry("ttft_seconds", a["name"], summary.get("ttft_seconds"), note))
    else:
        out.append(_entry("ttft_seconds", a["name"], None, "not measured: --ttft-tokens 0"))
    fraction = summary.get("prefill_gemm_fraction")
    why = "not measured: no prefill program or no int8 GEMM peak (--gemm-m 0)"
    out.append(_entry("prefill_gemm_fraction", a["name"], fraction, "" if fraction is not None else why))
    held, weights = summary.get("decode_resident_bytes"), a.get("weights_bytes")
    if held and weights:
        note = "RSS while decoding less the RSS before loading the program, over its weight bytes"
        anon = summary.get("decode_resident_anon_bytes")
        if anon:
            note += f"; its anonymous part alone (no file-backed pages) {anon / weights:.3g}"
        out.append(_entry("decode_rss_over_weights", a["name"], held / weights, note))
    else:
        why = "not measured: no resident bytes or weight bytes"
        out.append(_entry("decode_rss_over_weights", a["name"], None, why))
    return out


def is_executorch_fp32(subject: dict[str, Any]) -> bool:
    return (
        subject.get("kind") == "artifact"
        and subject.get("format") == "executorch"
        and (str(subject.get("precision", "")).lower() == "fp32")
    )


def _pte_goals(subjects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The .pte size of ExecuTorch fp32 artifacts against their fp32 weights (from the files:
    reported even when the artifact could not run)."""
    et = [s for s in subjects if is_executorch_fp32(s)]
    out = []
    for a in et:
        pte, fp32 = a.get("pte_bytes"), a.get("fp32_weights_bytes")
        if pte and fp32:
            out.append(_entry("pte_size_over_fp32_weights", a["name"], pte / fp32))
        else:
            out.append(_entry("pte_size_over_fp32_weights", a["name"], None, "not measured: no .pte size"))
    if not et:
        out.append(_entry("pte_size_over_fp32_weights", None, None, "not measured: no ExecuTorch fp32 artifact"))
    return out
