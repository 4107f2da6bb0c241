"""Given integers on the ExecuTorch step: a quantized checkpoint's q and scales, not torchao's own.

``rgmobile export QDIR --format executorch`` ships the checkpoint's integers unchanged. Instead
of ``quantize_`` (which would choose integers again), each weight becomes the torchao tensor
``quantize_`` would have built for the recipe, ``IntxUnpackedToInt8Tensor`` with int8 dynamic
activations per token, constructed from the given data: ``qdata`` = given q, ``scale`` = given
scale, zero point 0. XNNPACK then packs exactly those integers:

  linears      8da8w per output channel (scales stay fp32) or 8da4w per group (XNNPACK
               holds group scales as **bf16**: the given fp32 scales are rounded once,
               by at most 2^-9 relative).
  embedding    the head (``lm_head``) is built from the embedding's integers and scales; the
               lookup table (:class:`quantization.executorch_modules.IntRowEmbedding`) holds the
               same integers with the fp32 scales.
  rglru_gates  one linear per head (:class:`quantization.executorch_modules.HeadLinears`),
               each holding its head's given integers and scales as the linears do.

XNNPACK's blockwise int4 kernels take groups that are a multiple of 32 inputs; smaller groups
are refused (:func:`check_given`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from exporter.errors import RgMobileError
from quantization.qweights import GivenQuantization, QuantizedTensor
from quantization.recipe import WeightScheme

if TYPE_CHECKING:
    from quantization.executorch_modules import QuantizedStep

# XNNPACK's blockwise (qb4w) fully-connected kernels: group sizes that are multiples of this.
XNNPACK_GROUP_MULTIPLE = 32
SCALE_DTYPES = {"per_channel": "float32", "per_group": "bfloat16"}


def scale_dtype(scheme: WeightScheme) -> torch.dtype:
    """The dtype XNNPACK stores this scheme's scales in (per-group scales are bf16)."""
    return torch.bfloat16 if scheme.granularity == "per_group" else torch.float32


def check_given(given: GivenQuantization) -> None:
    """Refuse in one line a given recipe whose integers XNNPACK cannot hold as they are."""
    for cls in ("linears", "embedding", "rglru_gates"):
        scheme: WeightScheme | None = getattr(given.recipe, cls)
        if scheme is not None and scheme.group_size and scheme.group_size % XNNPACK_GROUP_MULTIPLE:
            raise RgMobileError(
                f"executorch: the checkpoint's {cls} use int{scheme.bits} groups of {scheme.group_size}; XNNPACK "
                f"holds int4 groups of a multiple of {XNNPACK_GROUP_MULTIPLE} (re-quantize with --group-size 32 "
                f"or 64, or export --format onnx)"
            )


def intx_tensor(qt: QuantizedTensor) -> Any:
    """The torchao weight ``quantize_`` would make for ``qt.scheme`` (8da8w / 8da4w), from the given data."""
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        IntxUnpackedToInt8TensorActivationQuantization,
    )

    n, k = qt.q.shape
    group = qt.scheme.group_size if qt.scheme.granularity == "per_group" else k
    # Per-group scales rounded to bf16 here already (XNNPACK stores them so): the eager step
    # then computes with the values the .pte holds, and is the exact reference of the lowering.
    scale = qt.scale.reshape(n, k // (group or k)).to(scale_dtype(qt.scheme)).float().contiguous()
    return IntxUnpackedToInt8Tensor(
        qdata=qt.q.contiguous(),
        scale=scale,
        zero_point=torch.zeros(scale.shape, dtype=torch.int8),
        target_dtype={8: torch.int8, 4: torch.int4}[qt.scheme.bits],  # type: ignore[attr-defined]
        block_size=(1, group),
        dtype=torch.float32,
        activation_quantization=IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN,
    )


def _set_weight(module: nn.Module, weight: Any) -> None:
    module.weight = nn.Parameter(weight, requires_grad=False)


@torch.no_grad()
def apply_given(step: QuantizedStep, given: GivenQuantization, head: str) -> dict[str, str]:
    """Put ``given``'s integers into ``step`` (a QuantizedStep: ``step.model`` and its ``head``).

    The RG-LRU gates become one linear per head first (:func:`split_gates`), each given its
    head's integers. Returns the stored scale dtype per recipe class. Every given parameter
    must exist in the model.
    """
    from quantization.executorch_modules import IntRowEmbedding, gate_linears, split_gates

    model = step.model
    params = dict(model.named_parameters())
    for name in given.weights:
        if name not in params:
            raise RgMobileError(f"quantized checkpoint: weight {name!r} is not a parameter of this model")
    if any(qt.block_diagonal for qt in given.weights.values()):
        split_gates(model)
    modules = dict(model.named_modules())
    recipe = given.recipe
    dtypes: dict[str, str] = {}
    for name, qt in given.weights.items():
        owner, _, leaf = name.rpartition(".")
        if name == "embed_tokens.weight":
            _set_weight(step.get_submodule(head), intx_tensor(qt))
            model.embed_tokens = IntRowEmbedding(qt.q, qt.scale)  # type: ignore[assignment]
        elif qt.block_diagonal:  # an RG-LRU gate: head i's integers [out, in] into its linear
            # clones, not views: XNNPACK serializes a view's whole storage (every head's integers)
            for linear, q, scale in zip(gate_linears(name, qt.q.shape[0]), qt.q, qt.scale, strict=True):
                _set_weight(modules[linear], intx_tensor(QuantizedTensor(q.clone(), scale.clone(), qt.scheme)))
        elif isinstance(modules.get(owner), nn.Linear) and leaf == "weight":
            _set_weight(modules[owner], intx_tensor(qt))
        else:
            raise RgMobileError(f"executorch: no integer form for quantized weight {name!r}")
    for cls in ("linears", "embedding", "rglru_gates"):
        scheme: WeightScheme | None = getattr(recipe, cls)
        if scheme is not None:
            dtypes[cls] = SCALE_DTYPES[scheme.granularity]
    if recipe.embedding is not None:
        dtypes["embedding_lookup"] = "float32"
    return dtypes
