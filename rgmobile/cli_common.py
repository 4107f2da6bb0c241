"""What the command line's modules share: the console results print to, the checkpoint
argument, comma-separated integer options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from exporter.errors import RgMobileError

out = Console()

CheckpointArg = Annotated[
    Path | None,
    typer.Argument(
        help="HF folder, official .pt, quantized checkpoint, or exported artifact folder (default: the bundled model)"
    ),
]
FloatCheckpointArg = Annotated[
    Path | None, typer.Argument(help="fp32 checkpoint: HF folder or official .pt (default: the bundled model)")
]


def int_list(text: str, option: str) -> tuple[int, ...]:
    """``"16,8,4"`` -> (16, 8, 4); anything but comma-separated integers is a user error naming ``option``."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise RgMobileError(f"{option} must be comma-separated integers, got {text!r}") from None
