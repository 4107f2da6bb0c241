"""Ship a quantized checkpoint's own integers and scales in a Core ML package, unchanged.

When ``rgmobile export`` reads a quantized checkpoint, its :class:`GivenQuantization` holds
the integers and scales to ship; Core ML must not quantize again. Where the export would run
coremltools' quantizer (exporter/targets/coreml.py, after the torch weights are released),
a MIL pass replaces each weight const of the recipe by a ``constexpr_*`` op built from the
given integers instead:

  iOS 18  ``constexpr_blockwise_shift_scale(data, scale)``, no offset: int8 or int4 data,
          one scale per block. Linears and the embedding keep our [out, in] layout (scale
          [out, 1] or [out, in / group]); a block-diagonal RG-LRU gate const is [h, in, out]
          in the program, so each head's integers [out, in] and scales [out, groups] are
          transposed back to [in, out] / [groups, out].
  iOS 17  ``constexpr_affine_dequantize(quantized_data, zero_point=0, scale, axis=0)``: int8,
          one scale per output row. Its single scale axis cannot hold the gates' scale per
          (head, output column): they stay float consts holding the dequantized given values
          (fp32 in the package: ``q * scale`` exactly); ``kept_float`` in the facts names them.

Scales are cast once to the dtype of the const they replace: fp16 for the linears and the
embedding of an fp16-compute package, fp32 for the gates (the RG-LRU computes in fp32,
exporter/targets/coreml_precision.py) and for every weight of an fp32 package. The facts
record the scale dtype per class; an fp16 scale that rounds to zero or overflows is refused.

The tied head: coremltools folds ``matmul(h, E^T)`` into a ``linear`` on the embedding const
itself, so the ONE embedding const feeds both the ``gather`` and the head; replacing it gives
both the embedding's integers, stored once. :mod:`quantization.coreml_readback`
(``read_quantized``) reads the integers back out of a saved package.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from quantization.coreml import class_of, effective_recipe, param_of
from quantization.qweights import GivenQuantization, QuantizedTensor, QuantizedWeights

log = logging.getLogger(__name__)

QUANTIZED_SUFFIX = "_quantized"  # as coremltools names its constexpr ops (read_weights strips it)
FP16_MAX = 65504.0


@dataclass(frozen=True)
class GivenPlan:
    """Which const of a converted program takes which given weight, and the facts for the manifest.

    ``consts``: const name -> (parameter name, recipe class, the const's numpy dtype name);
    ``weights``: the given integers and scales (held apart from the torch weights, which the
    export releases before the pass runs).
    """

    consts: dict[str, tuple[str, str, str]]
    weights: QuantizedWeights
    ios: int
    facts: dict[str, Any]


def plan_given(mlmodel: Any, model: Griffin, given: GivenQuantization, ios: int) -> GivenPlan:
    """The :class:`GivenPlan` for ``mlmodel`` (a converted program of ``model``, MIL in memory)."""
    effective = effective_recipe(given.recipe, ios)  # refuses what Core ML for ``ios`` cannot hold
    classes = class_of(model)
    consts: dict[str, tuple[str, str, str]] = {}
    seen: set[str] = set()
    for fn in mlmodel._mil_program.functions.values():
        for op in fn.find_ops(op_type="const"):
            name = param_of(op.name, model)
            if name is None or name not in given.weights or getattr(effective, classes[name]) is None:
                continue
            val = op.outputs[0].val
            want = tuple(given.weights[name].dequantize().shape)
            if tuple(val.shape) != want:
                raise RgMobileError(
                    f"coreml given weights: const {op.name} has shape {tuple(val.shape)}, {name} is {want}"
                )
            consts[op.name] = (name, classes[name], str(val.dtype))
            seen.add(name)
    want_names = {n for n in given.weights if getattr(effective, classes.get(n, ""), None) is not None}
    if want_names - seen:
        raise RgMobileError(
            f"coreml given weights: weights not found as consts: {sorted(want_names - seen)[:3]} "
            "(exporter changed the const names?)"
        )
    kept = sorted(n for n in given.weights if n not in want_names)
    scale_dtypes: dict[str, str] = {}
    for _, cls, dtype in consts.values():
        if scale_dtypes.setdefault(cls, dtype) != dtype:
            scale_dtypes[cls] = "mixed"
    op_type = "constexpr_blockwise_shift_scale" if ios >= 18 else "constexpr_affine_dequantize"
    facts = {
        "tool": "the checkpoint's integers and scales as constexpr ops (quantization/coreml_given.py)",
        "given": True,
        "method": given.method,
        "applied": effective.to_dict(),
        "op": op_type,
        "scale_dtypes": dict(sorted(scale_dtypes.items())),
        "kept_float": kept,
        "kept_float_reason": "iOS 17 constexpr_affine_dequantize has one scale axis; the given RG-LRU gates have "
        "one scale per (head, output column): shipped as fp32 consts holding q * scale"
        if kept
        else "",
        "quantized_consts": len(consts),
    }
    log.info("coreml given weights: %d consts (%s, %s), kept float: %d", len(consts), given.recipe.name,
             given.method, len(kept))  # fmt: skip
    return GivenPlan(consts, given.weights, ios, facts)


def scale_as(scale: np.ndarray, dtype: str, what: str) -> np.ndarray:
    """``scale`` cast to the const's float dtype; an fp16 scale that becomes 0 or inf is refused."""
    out = scale.astype(dtype)
    if dtype == "float16" and (np.any(out == 0) or not np.all(np.isfinite(out))):
        raise RgMobileError(
            f"coreml given weights: a scale of {what} does not fit fp16 (min {scale.min():.3g}, "
            f"max {scale.max():.3g}); export with --compute-precision fp32"
        )
    return out


def blockwise_inputs(qt: QuantizedTensor, dtype: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(data, scale) of ``constexpr_blockwise_shift_scale`` in the program's layout of the weight.

    A block-diagonal gate is held per head as [out, in]; the program's const is [h, in, out].
    """
    from coremltools.converters.mil.mil import types

    q = qt.q.numpy()
    s = qt.scale.numpy()
    if qt.block_diagonal:
        q, s = np.ascontiguousarray(q.transpose(0, 2, 1)), np.ascontiguousarray(s.transpose(0, 2, 1))
    data = q.astype(types.np_int4_dtype) if qt.scheme.bits == 4 else q.astype(np.int8)
    return data, scale_as(s, dtype, what)


def affine_inputs(qt: QuantizedTensor, dtype: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(quantized_data, scale [out]) of iOS 17 ``constexpr_affine_dequantize`` along axis 0."""
    if qt.block_diagonal or qt.scheme.bits != 8 or qt.scheme.granularity != "per_channel":
        raise RgMobileError(
            f"coreml given weights: {what} ({qt.scheme.to_dict()}) needs per-block weights, "
            "which Core ML has from iOS 18 on; pass --ios 18 (iOS 17 holds int8 per channel)"
        )
    return qt.q.numpy().astype(np.int8), scale_as(qt.scale.numpy()[:, 0], dtype, what)


def _rewrite_block(block: Any, plan: GivenPlan) -> int:
    from coremltools.converters.mil.mil import Builder as mb

    done = 0
    for op in list(block.operations):
        if op.op_type != "const" or op.name not in plan.consts:
            continue
        param, _, dtype = plan.consts[op.name]
        qt = plan.weights[param]
        name = op.name + QUANTIZED_SUFFIX
        if plan.ios >= 18:
            data, scale = blockwise_inputs(qt, dtype, param)
            new = mb.constexpr_blockwise_shift_scale(data=data, scale=scale, before_op=op, name=name)
        else:
            qdata, scale = affine_inputs(qt, dtype, param)
            new = mb.constexpr_affine_dequantize(
                quantized_data=qdata, zero_point=np.int8(0), scale=scale, axis=0, before_op=op, name=name
            )
        block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new, no_check_var_types=True)
        block.remove_ops([op])
        done += 1
    return done


def given_pass(plan: GivenPlan) -> Any:
    """A coremltools graph pass that puts ``plan``'s given integers in place of its consts."""
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.helper import block_context_manager

    class GivenWeightsPass(AbstractGraphPass):  # type: ignore[misc]
        def apply(self, prog: Any) -> None:
            rewrite = block_context_manager(_rewrite_block)
            for fname, fn in prog.functions.items():
                done = rewrite(fn, plan)
                if done != len(plan.consts):
                    raise RgMobileError(
                        f"coreml given weights: function {fname} has {done} of the {len(plan.consts)} planned consts"
                    )

    return GivenWeightsPass()


def apply_given(mlmodel: Any, plan: GivenPlan) -> Any:
    """The MLModel of ``mlmodel``'s saved program with the given integers in place of the float consts.

    Like :func:`quantization.coreml.apply_plan`, coremltools loads the program again from the saved
    spec and weights, so ``mlmodel`` may be an unloaded ``MLModel`` whose MIL program was dropped.
    """
    from coremltools.models import utils as model_utils

    from exporter.upstream.coremltools_9_0 import lean_coremltools

    with lean_coremltools():
        return model_utils._apply_graph_pass(mlmodel, given_pass(plan))
