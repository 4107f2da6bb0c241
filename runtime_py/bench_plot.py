"""PNG of a bench result: decode tokens/s and RSS against context position.

One line per artifact and baseline (p10-p90 spread as error bars); dashed lines
in the same colour are each artifact's bandwidth roofline. A flat line is the
point: Griffin's state, and so its cost, does not grow with context; the Gemma
baseline's KV cache does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.fsio import atomic_file


def plot_bench(data: dict[str, Any], path: Path) -> Path:
    """Draw ``data`` (run_bench's dict, schema v1) into ``path`` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in CI and on servers
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    positions = data["settings"]["positions"]
    for i, s in enumerate(s for s in data["subjects"] if s.get("error") is None):
        color = colors[i % len(colors)]
        rows = s["positions"]
        x = [r["position"] for r in rows]
        y = [r["decode"]["tokens_per_s"] for r in rows]
        lo = [max(0.0, v - r["decode"]["p10_tokens_per_s"]) for v, r in zip(y, rows)]
        hi = [max(0.0, r["decode"]["p90_tokens_per_s"] - v) for v, r in zip(y, rows)]
        label = f"{s['name']} ({s['precision']})" if s["kind"] == "artifact" else f"{s['name']} (baseline)"
        style = "-o" if s["kind"] == "artifact" else "--s"
        ax1.errorbar(x, y, yerr=[lo, hi], fmt=style, color=color, capsize=3, ms=4, lw=1.2, label=label)
        if s["kind"] == "artifact":
            ax1.plot(x, [r["roofline_tokens_per_s"] for r in rows], ":", color=color, lw=1)
        ax2.plot(x, [r["rss_bytes"] / 2**20 for r in rows], style, color=color, ms=4, lw=1.2, label=label)
    for ax, title, ylabel in (
        (ax1, "decode, p10-p90 (dotted: bandwidth roofline)", "tokens/s (log)"),
        (ax2, "resident memory after decoding", "RSS (MiB)"),
    ):
        if max(positions) > 0:
            ax.set_xscale("symlog", linthresh=max(1, min((p for p in positions if p > 0), default=1)))
        ax.set_xticks(positions)
        ax.set_xticklabels([str(p) for p in positions], fontsize=8)
        ax.set_xlabel("context position")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    ax1.set_yscale("log")  # artifacts, baselines and rooflines span orders of magnitude
    ax2.set_ylim(bottom=0)
    ax1.legend(fontsize=8, loc="best")
    bw = data["bandwidth"]
    fig.suptitle(
        f"rgmobile bench: {data['settings']['threads']} thread(s), bandwidth {bw['best_gb_s']:.1f} GB/s (best)",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
