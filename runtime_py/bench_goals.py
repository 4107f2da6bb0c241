"""The performance goals, as data, checked against one bench run's numbers.

Each goal entry: ``{"goal", "subject", "value", "target", "comparison", "met", "note"}``;
``met`` is null (and ``value`` usually too) when the run did not measure what
the goal needs (no int4 artifact, no transformers baseline, no export stats).
Goals concern the exported artifacts; baselines are what they are compared with. An artifact
run by an emulator (Core ML off macOS) is measured but held to no speed goal (``is_emulated``).

Per-subject summaries (``summarize``) are the numbers the goals read:
  decode_tokens_per_s   median over positions of the per-position median
  prefill_tokens_per_s  same for prefill (null without a prefill program)
  roofline_fraction     median over positions of achieved / roofline tokens/s
  decode_flatness       max over positions of |tok/s(p) / tok/s(p_min) - 1|
  rss_flatness          max over positions of |RSS(p) / RSS(p_min) - 1|
"""

from __future__ import annotations

import statistics
from typing import Any

# goal -> (target, comparison, what it means)
GOALS: dict[str, tuple[float, str, str]] = {
    "int4_roofline_fraction": (0.70, ">=", "int4 decode tok/s as a fraction of bandwidth / bytes per token"),
    "speedup_vs_transformers_fp32": (5.0, ">=", "decode tok/s over transformers eager fp32 decode tok/s"),
    "decode_flatness": (0.05, "<=", "max relative change of decode tok/s from the first to any position"),
    "rss_flatness": (0.05, "<=", "max relative change of RSS from the first to any position"),
    "prefill_over_decode": (10.0, ">=", "prefill tok/s over decode tok/s"),
    "export_peak_rss_bytes": (20e9, "<", "peak RSS of `rgmobile export` (ru_maxrss or sampled), bytes; 20 GB = 20e9"),
}


def _flatness(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2 or not vals[0]:
        return None
    return max(abs(v / vals[0] - 1.0) for v in vals)


def summarize(subject: dict[str, Any]) -> dict[str, Any]:
    rows = subject["positions"]
    decode = [r["decode"]["tokens_per_s"] for r in rows]
    prefill = [r["prefill"]["tokens_per_s"] for r in rows if r["prefill"] is not None]
    fractions = [r["roofline_fraction"] for r in rows if r.get("roofline_fraction") is not None]
    return {
        "decode_tokens_per_s": statistics.median(decode) if decode else None,
        "prefill_tokens_per_s": statistics.median(prefill) if prefill else None,
        "roofline_fraction": statistics.median(fractions) if fractions else None,
        "decode_flatness": _flatness(decode),
        "rss_flatness": _flatness([r["rss_bytes"] for r in rows]),
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
    if not int4:
        out.append(_entry("int4_roofline_fraction", None, None, "not measured: no int4 artifact in this run"))
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
            out.append(_entry("prefill_over_decode", a["name"], pre / ours))
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
    return out
