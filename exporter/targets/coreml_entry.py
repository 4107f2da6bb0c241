"""The Core ML format's entry in the format registry (exporter/formats.py). Light: strings
and data only; the recipe check imports its module when called."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.formats import FormatEntry

if TYPE_CHECKING:
    from quantization.recipe import Recipe


def check_recipe(recipe: Recipe, ios: int) -> None:
    """int4 and per-block weights need ``ios`` 18."""
    from quantization.coreml import check_recipe as check

    check(recipe, ios)


ENTRY = FormatEntry(
    name="coreml",
    export="exporter.targets.coreml:export",
    backend="runtime_py.coreml_backend:open_artifact",
    readback="quantization.coreml_readback:read_shipped",
    requirements="exporter.artifact.requirements:coreml_requirements",
    check_recipe="exporter.targets.coreml_entry:check_recipe",
    bundle_targets={"ios": 0},
)
