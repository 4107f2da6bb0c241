"""PNG of a validation report: logits and state error against absolute position.

Vertical lines mark multiples of the window (where the KV ring wraps); the
shaded span is the prompt; dashed lines are the thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.fsio import atomic_file


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Draw ``report`` (ValidationReport.to_dict()) into ``path`` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in CI and on servers
    import matplotlib.pyplot as plt

    pos = report["positions"]
    steps = report["steps"]
    thresholds = report["thresholds"]
    floor = 1e-12  # log axes cannot show an exact 0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.semilogy(pos["position"], [max(v, floor) for v in pos["max_abs_logits"]], lw=1, label="max |logits error|")
    ax2.semilogy(
        [s["start"] + s["t"] - 1 for s in steps],
        [max(s["max_state_abs"], floor) for s in steps],
        lw=1,
        color="tab:orange",
        label="max |state error| after step",
    )
    for ax, metric in ((ax1, "max_abs_logits"), (ax2, "max_state_abs")):
        if metric in thresholds:
            ax.axhline(thresholds[metric], ls="--", color="red", lw=1, label=f"threshold {thresholds[metric]:.0e}")
        ax.axvspan(0, report["prompt_tokens"] - 0.5, color="grey", alpha=0.15, label="prompt (prefill)")
        end = max(pos["position"], default=0)
        for k in range(report["window"], end + 1, report["window"]):
            ax.axvline(k - 0.5, color="grey", lw=0.5, ls=":")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    ax2.set_xlabel("absolute position (dotted: multiples of the window)")
    verdict = "PASSED" if report["passed"] else "FAILED"
    ax1.set_title(f"{report['format']} {report['precision']} vs PyTorch reference: {verdict}")
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
