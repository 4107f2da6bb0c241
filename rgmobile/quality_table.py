"""What ``rgmobile validate --quality`` prints: the quality report as a table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from rgmobile.cli_format import fmt_bytes, fmt_metric


def print_quality(quality: dict[str, Any], failed: set[str], out: Console) -> None:
    """The quality report of ``rgmobile validate`` (runtime_py/quality.py) as a table."""
    from runtime_py.thresholds import QUALITY_METRICS

    m, size = quality["metrics"], quality["size"]
    table = Table(title=f"quality: {quality['tokens']} tokens of {quality['text']}")
    for col in ("metric", "value", "threshold", ""):
        table.add_column(col)
    rows = [
        ("size", f"{fmt_bytes(size['artifact_bytes'])} = {size['ratio']:.3f} x fp32 "
         f"({fmt_bytes(size['fp32_bytes'])})", "size_ratio"),
        ("perplexity", f"{m['ppl_artifact']:.3f} vs fp32 {m['ppl_reference']:.3f} ({m['ppl_increase_pct']:+.2f}%)",
         "ppl_increase_pct"),
        ("KL(fp32 || artifact)", f"mean {m['kl_mean']:.2e}, max {m['kl_max']:.2e} nats", "kl_mean"),
        ("top-1 agreement", fmt_metric(m["top1_agreement_text"]), "top1_agreement_text"),
        ("logits SQNR", f"{m['sqnr_db']:.1f} dB", "sqnr_db"),
        ("logits error", f"max abs {m['max_abs_logits_text']:.3g}, rel L2 {m['rel_l2']:.3g}, "
         f"cosine min {fmt_metric(m['cosine_min'])}", None),
        ("greedy match", f"mean {m['greedy_match_mean']:.1f}, min {m['greedy_match_min']:.0f} of "
         f"{quality['greedy']['tokens']} tokens", None),
    ]  # fmt: skip
    if "ppl_increase_pct_after_prompt" in m:  # the second halves, scored after the first halves ran as prompts
        rows.append(("after a prompt", f"perplexity {m['ppl_increase_pct_after_prompt']:+.2f}%, KL mean "
                     f"{m['kl_mean_after_prompt']:.2e}, top-1 {fmt_metric(m['top1_agreement_text_after_prompt'])} "
                     f"({m['tokens_after_prompt']:.0f} tokens)", None))  # fmt: skip
    for label, value, metric in rows:
        limit = quality["thresholds"].get(metric) if metric else None
        bound = QUALITY_METRICS.get(metric or "")
        shown = "-" if limit is None else f"{'<=' if bound == 'max' else '>='} {limit:g}"
        mark = "" if limit is None else "[red]FAIL[/]" if metric in failed else "[green]ok[/]"
        table.add_row(label, value, shown, mark)
    out.print(table)
