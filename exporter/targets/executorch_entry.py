"""The ExecuTorch format's entry in the format registry (exporter/formats.py). Light:
strings and data only; the recipe check imports its module when called."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.formats import FormatEntry

if TYPE_CHECKING:
    from quantization.recipe import Recipe


def check_recipe(recipe: Recipe, ios: int) -> None:
    """Only the verified XNNPACK paths (8da8w, 8da4w); ``ios`` does not matter."""
    from quantization.executorch import check_recipe as check

    check(recipe)


ENTRY = FormatEntry(
    name="executorch",
    export="exporter.targets.executorch:export",
    backend="runtime_py.executorch_backend:open_artifact",
    readback="quantization.executorch_readback:read_shipped",
    requirements="exporter.artifact.requirements:executorch_requirements",
    check_recipe="exporter.targets.executorch_entry:check_recipe",
    bundle_targets={"android": 1},
)
