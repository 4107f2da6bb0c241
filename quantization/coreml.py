"""Apply a quantization recipe to converted Core ML models with ``coremltools.optimize.coreml``.

Per recipe class (quantization/recipe.py), on each converted program (before it is
renamed and saved; both functions of an iOS 18 multifunction package and both iOS 17
packages), one ``OpLinearQuantizerConfig(mode="linear_symmetric")`` per weight const.
In two steps, so the export can free the torch weights in between: :func:`plan_quantization`
(needs the converted MIL program and the model's names and shapes, not its weight values)
and :func:`apply_plan` (loads the program from its saved package);
selected by the const's name (torch.export names it ``p_model_<parameter, dots as _>``,
with ``_to_fp16`` once the fp16 pass has cast it):

  linears      ``linear`` weights [out, in]: int8 per output channel, or int4 in blocks
               of ``group_size`` inputs (per block needs iOS 18:
               ``constexpr_blockwise_shift_scale``; iOS 17 only has
               ``constexpr_affine_dequantize``, one scale per channel).
  embedding    the ONE [vocab, width] const feeds both the ``gather`` (embedding) and
               the head ``linear`` (coremltools folds ``matmul(h, E^T)`` into a linear):
               quantizing it quantizes both and they stay tied.
  rglru_gates  block-diagonal ``matmul`` weights [h, in, out]: the recipe wants one scale
               per (head, output column). iOS 18: per block with block sizes (1, 0, 1),
               exactly that. iOS 17's single-axis scale cannot express it, so the gates
               stay float there (``kept_float`` in the facts says so).

Maths (coremltools 9.0, read from ``optimize/_utils.py`` and checked in
tests/test_quant_coreml.py): symmetric, scale = max|w| / (2^(b-1) - 1), q = round(w / scale),
as quantization/tensor.py, but computed from the fp16 weights and with fp16 scales when the
model computes in fp16, so the integers can differ from ``fake_quantized`` by one step
where w / scale lies within fp16 rounding of x.5. :mod:`quantization.coreml_readback`
reads the shipped integers back.

A quantized checkpoint's own integers (``rgmobile export QDIR``) are not quantized again:
quantization/coreml_given.py puts them in place of the consts at the same stage.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any

from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from quantization.recipe import Recipe, WeightScheme
from quantization.reference import weight_classes

log = logging.getLogger(__name__)

PREFIX = "p_model_"
_CAST_SUFFIX = re.compile(r"(_to_fp16|_to_fp32)$")


def check_recipe(recipe: Recipe, ios: int) -> None:
    """Fail before converting when Core ML for ``ios`` cannot hold ``recipe``'s weights."""
    for cls in ("linears", "embedding"):
        scheme: WeightScheme | None = getattr(recipe, cls)
        if scheme is not None and scheme.granularity == "per_group" and ios < 18:
            raise RgMobileError(
                f"coreml quantization: {cls} at int{scheme.bits} in groups of {scheme.group_size} needs "
                f"per-block weights, which Core ML has from iOS 18 on; pass --ios 18 (iOS 17 has int8 per channel)"
            )
        if scheme is not None and scheme.bits == 4 and ios < 18:
            raise RgMobileError(
                f"coreml quantization: {cls} at int4 needs 4-bit weights, which Core ML has from iOS 18 on; "
                "pass --ios 18 (iOS 17 has int8 per channel)"
            )


def effective_recipe(recipe: Recipe, ios: int) -> Recipe:
    """The recipe as the Core ML model holds it: on iOS 17 the RG-LRU gates stay float."""
    check_recipe(recipe, ios)
    if ios < 18 and recipe.rglru_gates is not None:
        return replace(recipe, rglru_gates=None)
    return recipe


def param_of(const_name: str, model: Griffin) -> str | None:
    """Our parameter name for a MIL const/constexpr name, or None if it is not a weight."""
    stem = _CAST_SUFFIX.sub("", const_name)
    table = {PREFIX + name.replace(".", "_"): name for name, _ in model.named_parameters()}
    return table.get(stem)


def class_of(model: Griffin) -> dict[str, str]:
    """Parameter name -> recipe class, for every quantizable weight."""
    return {name: cls for cls, names in weight_classes(model).items() for name in names}


def _op_config(scheme: WeightScheme, cls: str, rank: int, ios: int) -> Any:
    import coremltools.optimize.coreml as cto

    dtype = f"int{scheme.bits}"
    common: dict[str, Any] = {"mode": "linear_symmetric", "dtype": dtype, "weight_threshold": 1}
    if ios < 18:  # constexpr_affine_dequantize: per channel (axis 0 for linear and gather)
        return cto.OpLinearQuantizerConfig(granularity="per_channel", **common)
    if cls == "rglru_gates":  # [h, in, out] used as x @ w[h]: one scale per (head, output column)
        block: tuple[int, ...] = (1, 0, 1)
    elif scheme.granularity == "per_group":
        assert scheme.group_size is not None
        block = (1, scheme.group_size)
    else:
        block = (1, 0)
    assert len(block) == rank
    return cto.OpLinearQuantizerConfig(granularity="per_block", block_size=block, **common)


@dataclass(frozen=True)
class QuantPlan:
    """What :func:`apply_plan` does to one converted program: per-const configs and the facts.

    Built by :func:`plan_quantization` from the const names of the converted MIL program
    and the names / shapes / module types of ``model`` (no weight values: a model whose
    weights were released by ``exporter.model.release`` plans the same).
    """

    op_configs: dict[str, Any]
    facts: dict[str, Any]


def plan_quantization(mlmodel: Any, model: Griffin, recipe: Recipe, ios: int) -> QuantPlan:
    """The :class:`QuantPlan` of ``recipe`` for ``mlmodel`` (a converted program of ``model``, MIL in memory)."""
    effective = effective_recipe(recipe, ios)
    classes = class_of(model)
    params = dict(model.named_parameters())
    configs: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for fn in mlmodel._mil_program.functions.values():
        for op in fn.find_ops(op_type="const"):
            name = param_of(op.name, model)
            if name is None or name not in classes:
                continue
            scheme = getattr(effective, classes[name])
            if scheme is None:
                continue
            configs[op.name] = _op_config(scheme, classes[name], params[name].ndim, ios)
            seen[name] = op.name
    want = {n for n, c in classes.items() if getattr(effective, c) is not None}
    if want - set(seen):
        raise RgMobileError(
            f"coreml quantization: weights not found as consts: {sorted(want - set(seen))[:3]} "
            "(exporter changed the const names?)"
        )
    kept = sorted(n for n, c in classes.items() if getattr(effective, c) is None and getattr(recipe, c) is not None)
    facts = {
        "tool": "coremltools.optimize.coreml.linear_quantize_weights (linear_symmetric)",
        "applied": effective.to_dict(),
        "kept_float": kept,
        "kept_float_reason": "iOS 17 constexpr_affine_dequantize has one scale axis; the recipe wants one "
        "scale per (head, output column) of the block-diagonal RG-LRU gates"
        if kept
        else "",
        "quantized_consts": len(configs),
    }
    log.info("coreml quantization: %d weight consts (%s), kept float: %d", len(configs), effective.name, len(kept))
    return QuantPlan(configs, facts)


def apply_plan(mlmodel: Any, plan: QuantPlan) -> Any:
    """The quantized MLModel: ``linear_quantize_weights`` with ``plan``'s configs.

    coremltools quantizes a program it loads from ``mlmodel``'s saved spec and weights
    (``mlmodel.weights_dir``), never from an in-memory MIL program, so ``mlmodel`` may be
    an unloaded ``MLModel`` of a saved package.
    """
    import coremltools.optimize.coreml as cto

    from exporter.targets.coreml_lean import lean_coremltools

    config = cto.OptimizationConfig(op_name_configs=plan.op_configs)
    with lean_coremltools():
        return cto.linear_quantize_weights(mlmodel, config=config)


def quantize_mlmodel(
    mlmodel: Any, model: Griffin, recipe: Recipe, ios: int, release_program: bool = False
) -> tuple[Any, dict[str, Any]]:
    """(the quantized MLModel, facts) for one converted program of ``model``: plan, then apply.

    ``release_program``: drop ``mlmodel``'s in-memory MIL program (its float weights)
    once the const names are read; coremltools quantizes a copy it loads from the saved
    weights anyway, so the float weights are held once, not twice. ``mlmodel`` is then
    only good for ``get_spec()`` / ``save()``; for callers done with it.
    """
    plan = plan_quantization(mlmodel, model, recipe, ios)
    if release_program:
        mlmodel._mil_program = None
    return apply_plan(mlmodel, plan), plan.facts
