"""What ``rgmobile info`` prints: a config, its parameter counts and state size, as a table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from rgmobile.cli_format import fmt_bytes as _fmt_bytes

if TYPE_CHECKING:
    from exporter.config import GriffinConfig
    from quantization.qweights import GivenQuantization


def print_info(
    config: GriffinConfig, source: str, given: GivenQuantization | None, checkpoint: Path | None, out: Console
) -> None:
    """Config, parameter counts, state size and (for a quantized checkpoint folder) its recipe and file size."""
    table = Table(title=f"RecurrentGemma / Griffin: {source}", show_header=False)
    for key, value in config.to_dict().items():
        if key == "block_types":
            value = f"{len(value)} layers: " + "".join("R" if b == "recurrent" else "A" for b in value)
        table.add_row(key, str(value))
    counts = config.parameter_counts()
    table.add_row("parameters", f"{counts['total']:,} (embedding/head {counts['embedding']:,}, tied)")
    for label, nbytes in (("fp32", 4), ("fp16", 2)):
        state = config.state_bytes(dtype_bytes=nbytes)
        table.add_row(
            f"state (batch 1, {label})",
            f"{_fmt_bytes(state['total'])} = KV ring {_fmt_bytes(state['kv'])} + conv {_fmt_bytes(state['conv'])} "
            f"+ RG-LRU {_fmt_bytes(state['rg_lru'])} (fp32); the same at every context length",
        )
    if given is not None and checkpoint is not None:
        from exporter.checkpoint.quantized import quantized_bytes

        r = given.recipe
        classes = ", ".join(f"{k} {getattr(r, k).bits}-bit" for k in ("linears", "embedding", "rglru_gates")
                            if getattr(r, k) is not None)  # fmt: skip
        table.add_row("quantization", f"{r.name} ({given.method}): {classes}; {len(given.weights)} weights")
        size = quantized_bytes(checkpoint)
        table.add_row("weights file", f"{_fmt_bytes(size)} = {size / (4 * counts['total']):.3f} x fp32")
    out.print(table)
