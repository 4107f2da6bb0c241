"""The export targets (after optimum-executorch's ``@register_recipe``): each format's
``export`` function, named by its entry in the format registry (exporter/formats.py).

Each target is a function ``export(model, out_dir, options, source, given, weights) -> TargetResult``
(``options``: a :class:`TargetOptions`, what a target reads of ``rgmobile export``'s options;
``source``: the checkpoint path, for metadata; ``given``: the integers and scales of a
quantized checkpoint, to ship as they are, or None to apply ``options.quant_recipe``;
``weights``: None, or each weight by name when ``model`` is a skeleton without them, the
streamed export, which only the ONNX target implements) that writes its program files
into ``out_dir`` (a temporary folder that :mod:`rgmobile.export` renames into
place) and says which program is which.
The orchestrator copies the tokenizer and writes the manifest; a target does not.

A target owns ``model`` for the call: :func:`rgmobile.export.export` passes a model
it loaded itself and only reads ``model.config`` afterwards, so a target may call
:func:`exporter.model.release.release_weights` once it no longer needs the weights
(the Core ML target does, before quantizing; a caller of a target that still
needs the weights must pass a copy).

Modules are imported only when their target is used, so a missing optional
toolchain (executorch, coremltools) only fails for that target.
To add a target: write ``exporter/targets/<name>.py`` with an ``export`` function
and name it in the format's entry (docs/architecture.md, "Adding a format").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from exporter.artifact.manifest import Program
from exporter.formats import check_format, format_names, get_format

if TYPE_CHECKING:
    import torch

    from exporter.model.griffin import Griffin
    from quantization.qweights import GivenQuantization
    from quantization.recipe import Recipe


class TargetOptions(Protocol):
    """What a target reads of the export options (``rgmobile.export.ExportOptions`` is one; its
    docstring says what each field means). Defined here so that targets do not import the pipeline."""

    @property
    def prefill_chunk(self) -> int: ...
    @property
    def prefill_logits(self) -> str | None: ...  # resolved by ExportOptions: "all" or "last"
    @property
    def one_program(self) -> bool | None: ...  # ExportOptions resolves its default (None) to a bool
    @property
    def prefill_any_length(self) -> bool: ...  # the ONNX prefill program runs t = 2..prefill_chunk
    @property
    def external_data(self) -> str: ...
    @property
    def ios(self) -> int: ...
    @property
    def compute_precision(self) -> str: ...
    @property
    def coreml_state(self) -> str: ...
    @property
    def accuracy_level(self) -> int: ...
    @property
    def quant_recipe(self) -> Recipe: ...
    @property
    def prefill_int8(self) -> bool: ...
    @property
    def prefill_lengths(self) -> tuple[int, ...]: ...  # executorch, coreml: extra prefill programs, longest first


@dataclass(frozen=True)
class TargetResult:
    """What a target wrote.

    Fields:
      programs: manifest programs, e.g. {"decode": Program("decode.onnx", 1), "prefill": ...}.
      precision: "fp32", "fp16", "int8", ... (the manifest's ``precision``).
      quantization: the quantization recipe applied, or None.
      details: per-format facts for the manifest's ``format_details``.
    """

    programs: dict[str, Program]
    precision: str = "fp32"
    quantization: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)


# A weight of the model by parameter name, made or read now (fp32): given to a target instead of the
# weights themselves when ``model`` is a skeleton on the meta device (``--stream-weights``, ONNX only).
WeightsOf = Callable[[str], "torch.Tensor"]
TargetFn = Callable[
    ["Griffin", Path, "TargetOptions", str, "GivenQuantization | None", "WeightsOf | None"], TargetResult
]


def program_lengths(prefill_chunk: int, extra: tuple[int, ...] = ()) -> dict[str, int]:
    """Program name -> the tokens it runs per call, for every target: ``decode`` (1), ``prefill``
    (the chunk, when it is above 1) and ``prefill_<t>`` for each extra length, longest first
    (``--prefill-lengths``: ExecuTorch methods and Core ML functions sharing the weights)."""
    lens = {"decode": 1}
    if prefill_chunk > 1:
        lens["prefill"] = prefill_chunk
    lens.update({f"prefill_{t}": t for t in sorted(extra, reverse=True)})
    return lens


def target_names() -> list[str]:
    return sorted(format_names())


def check_target(name: str) -> None:
    check_format(name, f"unknown export format {name!r}", "valid formats")


def get_target(name: str) -> TargetFn:
    """The export function of target ``name``; an unknown name fails with the valid choices."""
    target: TargetFn = get_format(name, f"unknown export format {name!r}", "valid formats").load("export")
    return target
