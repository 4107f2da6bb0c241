"""What ``rgmobile package`` prints: a bundle's files, sizes and what it needs, as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rgmobile.cli_format import fmt_bytes as _fmt_bytes


def print_bundle(path: Path, manifest: Any, out: Console) -> None:
    """Files, sizes, total, precision, minimum runtime, state size of a bundle."""
    bundle = manifest.bundle or {}
    subject = f"{bundle.get('target')}, {manifest.format} {manifest.precision}"
    table = Table(title=f"{path}: {bundle.get('name')} ({subject})")
    table.add_column("file")
    table.add_column("size", justify="right")
    for f in manifest.files:
        table.add_row(f.path, _fmt_bytes(f.size))
    table.add_row("[bold]total[/]", f"[bold]{_fmt_bytes(sum(f.size for f in manifest.files))}[/]")
    out.print(table)
    needs = ", ".join(f"{k} >= {v}" for k, v in (manifest.runtime_requirements or {}).items()) or "-"
    validation = bundle.get("validation", {}).get("status", "-")
    out.print(
        f"precision {manifest.precision}; minimum runtime: {needs}; "
        f"state {_fmt_bytes(int(bundle.get('state_bytes', 0)))} "
        f"per sequence (constant in context length); validation: {validation}",
        highlight=False,
    )
