"""What ``rgmobile bench`` prints: its result (runtime_py/bench_schema.py) as tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from rgmobile.cli_format import fmt_bytes
from runtime_py.bench_goals import ceiling_note


def _fmt_rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _fmt_roofline(row: dict[str, Any]) -> str:
    """The roofline fraction from the weight bytes, and from the bytes the process holds when measured."""
    resident = row.get("resident_roofline_fraction")
    held = f"{100 * resident:.0f}%" if resident is not None else "-"
    return f"{100 * row['roofline_fraction']:.0f}% / {held}"


def contention_line(entry: dict[str, Any]) -> str:
    """Decode tok/s quiet -> with a busy core, per spin setting, and the busy no-spin / spin ratio."""
    parts = []
    for spin in (True, False):
        rows = {r["busy"]: r for r in entry["rows"] if r["spin"] == spin}
        if not rows:
            continue
        rate = {b: ("failed" if r["tokens_per_s"] is None else _fmt_rate(r["tokens_per_s"])) for b, r in rows.items()}
        ratio = entry["busy_over_quiet"] if spin else entry.get("busy_over_quiet_no_spin")
        kept = f" ({100 * ratio:.0f}% kept)" if ratio is not None else ""
        parts.append(f"{'spinning' if spin else 'no spin'} {rate.get(False, '-')} -> {rate.get(True, '-')} tok/s{kept}")
    cross = entry.get("no_spin_over_spin_busy")
    return "; ".join(parts) + (f"; busy, no spin / spinning {cross:.2f}x" if cross is not None else "")


def print_bench(data: dict[str, Any], out: Console) -> None:
    """The measurements table, each artifact's time to first token, and the goals table."""
    bw, gemm = data["bandwidth"], data.get("int8_gemm")
    peak = (
        f"int8 GEMM {gemm['best_ops_per_s'] / 1e9:.0f} GOPS best ({gemm['kernel'].split(' ')[0]})"
        if gemm
        else "int8 GEMM not measured"
    )
    table = Table(
        title=f"bench: {data['settings']['threads']} thread(s); bandwidth {bw['best_gb_s']:.1f} GB/s best, "
        f"{bw['median_gb_s']:.1f} median; {peak}"
    )
    columns = ("subject", "position", "decode tok/s (p10-p90)", "prefill tok/s", "prefill GEMM", "RSS", "state",
               "roofline weights / held")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "subject" else "right", overflow="fold")
    for s in data["subjects"]:
        if s.get("error") is not None:
            table.add_row(s["name"], "-", "[red]failed[/]", "", "", "", "", "")
            continue
        label = f"{s['name']} ({s['precision']})"
        for i, r in enumerate(s["positions"]):
            d, pre, frac = r["decode"], r["prefill"], r.get("prefill_gemm_fraction")
            table.add_row(
                label if i == 0 else "", str(r["position"]),
                f"{_fmt_rate(d['tokens_per_s'])} "
                f"({_fmt_rate(d['p10_tokens_per_s'])}-{_fmt_rate(d['p90_tokens_per_s'])})",
                _fmt_rate(pre["tokens_per_s"]) if pre else "-", "-" if frac is None else f"{100 * frac:.0f}%",
                fmt_bytes(r["rss_bytes"]), fmt_bytes(r["state_bytes"]), _fmt_roofline(r),
            )  # fmt: skip
    out.print(table)
    for s in data["subjects"]:
        ttft = s.get("ttft")
        if s.get("error") is None and ttft:
            out.print(
                f"TTFT {s['name']}: {ttft['seconds']:.3g} s for a {ttft['tokens']}-token prompt "
                f"({ttft.get('prefill_steps', 0)} prefill chunks, "
                + (f"a {ttft['tail_tokens']}-token tail in {_calls(ttft)}, " if ttft.get("tail_tokens") else "")
                + f"{ttft.get('decode_steps', 0)} decode steps)",
                highlight=False,
            )
    for s in data["subjects"]:
        t = s.get("together") if s.get("error") is None else None
        if t and t.get("error") is not None:
            out.print(f"programs together {s['name']}: [red]failed[/] {t['error']}", highlight=False)
        elif t:
            anon = "" if t["anon_held_bytes"] is None else f", {fmt_bytes(t['anon_held_bytes'])} anonymous"
            out.print(
                f"programs together {s['name']}: held {fmt_bytes(t['held_bytes'])} = {t['held_over_weights']:.2f} x "
                f"the weights{anon}; decode {_fmt_rate(t['tokens_per_s'])} tok/s",
                highlight=False,
            )
    for s in data["subjects"]:
        if s.get("error") is None and s.get("contention"):
            out.print(f"busy core {s['name']}: {contention_line(s['contention'])}", highlight=False)
    for s in data["subjects"]:
        ceiling = (s.get("summary") or {}).get("prefill_over_decode_ceiling") if s.get("error") is None else None
        if ceiling is not None:
            out.print(f"prefill / decode {s['name']}: {ceiling_note(ceiling)}", highlight=False)
    goals = Table(title="goals")
    for col in ("goal", "subject", "value", "target", ""):
        goals.add_column(col)
    marks = {True: "[green]met[/]", False: "[red]not met[/]", None: "[yellow]not measured[/]"}
    for g in data["goals"]:
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        goals.add_row(g["goal"], g["subject"] or "-", value, f"{g['comparison']} {g['target']:.3g}", marks[g["met"]])
    out.print(goals)


def _calls(ttft: dict[str, Any]) -> str:
    """How many prefill calls ran the first-token prompt's tail (files before ``tail_calls``: one)."""
    n = len(ttft.get("tail_calls") or [ttft["tail_tokens"]])
    return "1 call" if n == 1 else f"{n} calls"
