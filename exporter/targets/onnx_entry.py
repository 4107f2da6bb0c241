"""The ONNX format's entry in the format registry (exporter/formats.py). Light: strings and
data only; the recipe check imports its module when called."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.formats import FormatEntry

if TYPE_CHECKING:
    from quantization.recipe import Recipe


def check_recipe(recipe: Recipe, ios: int) -> None:
    """onnxruntime's group sizes (16..256); ``ios`` does not matter."""
    from quantization.onnx import check_recipe as check

    check(recipe)


ENTRY = FormatEntry(
    name="onnx",
    export="exporter.targets.onnx:export",
    backend="runtime_py.onnx_backend:open_artifact",
    readback="quantization.onnx_readback:read_shipped",
    requirements="exporter.artifact.requirements:onnx_requirements",
    check_recipe="exporter.targets.onnx_entry:check_recipe",
    bundle_targets={"android": 0, "ios": 1},
    spin_control=True,
)
