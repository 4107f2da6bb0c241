"""Apply a quantization recipe with torchao before lowering to ExecuTorch / XNNPACK.

Per recipe class (quantization/recipe.py), on the step module the ExecuTorch target traces
(exporter/targets/executorch.py), with ``torchao.quantization.quantize_``:

  linears      every block nn.Linear -> ``Int8DynamicActivationIntxWeightConfig``: int8
               per output channel (``PerAxis(0)``, "8da8w") or int4 in groups along K
               (``PerGroup(g)``, "8da4w"). Activations are quantized **dynamically to int8
               per token** (asymmetric) at run time: XNNPACK's qd8 fully-connected kernels.
               This differs from the ONNX artifacts, which keep fp32 activations.
  embedding    the tied table is untied: the head becomes its own ``nn.Linear``
               (``lm_head``) quantized like the linears at the embedding's bits (8da8w per
               channel, or 8da4w per group); the lookup table is an ``IntRowEmbedding``
               holding *the head's own integers and scales* (read back from torchao's
               tensor), so embedding and head stay tied numerically. The table runs on the
               portable kernels (``embedding`` of an int8 table, cast, multiply by the
               gathered scales), is stored once as int8 (4-bit values are not packed) and
               the head once, packed by XNNPACK.
  rglru_gates  one ``nn.Linear`` per head (the block-diagonal ``einsum`` weights [h, i, j]
               split, :func:`quantization.executorch_modules.split_gates`), quantized like the
               linears at the recipe's gate scheme: 8da8w per channel (the built-in recipes)
               or 8da4w per group. Kept fp32 (``kept_float`` in the facts) only when a recipe
               leaves them float.

Why not torchao's ``IntxWeightOnlyConfig``: on linears lowered with XNNPACK it gives silently
wrong logits (measured); on nn.Embedding it lowers (``do_quant_fusion_and_const_prop``) to
``quantized_decomposed::embedding_byte.out``, which the ExecuTorch pybindings of executorch
1.5.1 do not register ("Missing operator"), so it could not be verified here. The portable
lookup above needs no extra kernel library and is checked against eager in
tests/test_quant_executorch.py.

The quantized eager module this builds (:func:`quantized_step`) is the exact program that
gets lowered: :class:`StepBackend` runs it as the reference for the correctness of lowering.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from exporter.step.iospec import build_iospec
from quantization.executorch_given import apply_given, check_given
from quantization.executorch_modules import IntRowEmbedding, QuantizedStep, split_gates
from quantization.qweights import GivenQuantization
from quantization.recipe import Recipe, WeightScheme
from quantization.reference import weight_classes

log = logging.getLogger(__name__)

HEAD = "lm_head"
# (bits, granularity) -> the XNNPACK kernel family it lowers to; anything else is refused.
SUPPORTED: dict[tuple[int, str], str] = {
    (8, "per_channel"): "8da8w (int8 dynamic activations per token, int8 weights per output channel)",
    (4, "per_group"): "8da4w (int8 dynamic activations per token, int4 weights per group)",
}
ACTIVATIONS = "int8, dynamic per token (asymmetric), in every quantized linear"


def check_recipe(recipe: Recipe, widths: tuple[int, ...] = (), gate_width: int | None = None) -> None:
    """Fail before exporting when no verified ExecuTorch path implements ``recipe``.

    ``widths``: the inputs of the linears and the head; ``gate_width``: of each RG-LRU gate's
    per-head linears (lru_width / heads)."""
    for cls in ("linears", "embedding", "rglru_gates"):
        scheme: WeightScheme | None = getattr(recipe, cls)
        if scheme is None:
            continue
        if (scheme.bits, scheme.granularity) not in SUPPORTED:
            raise RgMobileError(
                f"executorch quantization: {cls} at int{scheme.bits} {scheme.granularity} has no verified "
                f"XNNPACK path (weight-only int8/int4 gives wrong logits); use int8 per_channel or int4 "
                f"per_group (--quant int8 / --quant int4), or --format onnx"
            )
        if cls == "rglru_gates":  # --group-size does not reach the gates: only the recipe sets theirs
            ks: tuple[int, ...] = (gate_width,) if gate_width else ()
            what, hint = "an RG-LRU gate head's", "set the recipe's rglru_gates group_size to a divisor of"
        else:
            ks, what, hint = widths, "a linear's", "pass --group-size dividing"
        for k in ks:
            if scheme.group_size and k % scheme.group_size:
                raise RgMobileError(
                    f"executorch quantization: group size {scheme.group_size} does not divide {what} "
                    f"{k} inputs; {hint} {k}"
                )


def torchao_config(scheme: WeightScheme) -> Any:
    """The torchao config that quantizes an ExecuTorch linear at ``scheme`` (8da8w or 8da4w)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    granularity = PerAxis(0) if scheme.granularity == "per_channel" else PerGroup(scheme.group_size)
    dtype = {8: torch.int8, 4: torch.int4}[scheme.bits]  # type: ignore[attr-defined]
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity)


def _integers(weight: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(qdata [n, k] int8, scales [n, groups] fp32) of a torchao ``IntxUnpackedToInt8Tensor``."""
    qdata, scale = weight.qdata, weight.scale
    zero = getattr(weight, "zero_point", None)
    if zero is not None and bool(torch.any(zero != 0)):
        raise RgMobileError("executorch quantization: expected symmetric weights (zero point 0) from torchao")
    return qdata, scale.reshape(qdata.shape[0], -1)


@torch.no_grad()
def quantized_step(
    model: Griffin,
    recipe: Recipe,
    in_place: bool = False,
    given: GivenQuantization | None = None,
    last_logits: bool = False,
) -> tuple[QuantizedStep, dict[str, Any]]:
    """``model`` as a step module quantized with torchao per ``recipe``, and the facts.

    ``given``: a quantized checkpoint's integers and scales (its recipe replaces ``recipe``):
    they are put into the step as they are (quantization/executorch_given.py), not chosen again.

    ``last_logits``: the step's head runs for the last position only (exporter/step/step.py).

    ``in_place=False`` quantizes a deep copy (``model`` is left as it was: tests, references).
    ``in_place=True`` quantizes ``model`` itself, swapping its linears and embedding for integer
    modules (each fp32 weight is freed as soon as it is replaced): the export target's mode,
    where the model has no other user and a copy would double the fp32 weights (10.7 GB at 2B).
    """
    from torchao.quantization import quantize_

    if given is not None:
        recipe = given.recipe
        check_given(given)
    widths = tuple(sorted({m.in_features for m in model.modules() if isinstance(m, nn.Linear)}))
    check_recipe(recipe, widths + (model.config.width,), model.config.lru_width // model.config.num_heads)
    classes = weight_classes(model)
    params = dict(model.named_parameters())
    count = {cls: sum(params[n].numel() for n in names) for cls, names in classes.items()}
    classified = {n for names in classes.values() for n in names}
    other_params = sum(p.numel() for n, p in params.items() if n not in classified)
    del params  # holds no fp32 weight alive while quantizing in place
    step = QuantizedStep((model if in_place else copy.deepcopy(model)).float().eval(), last_logits).eval()
    facts: dict[str, Any] = {"tool": "torchao.quantization.quantize_ before to_edge_transform_and_lower"}
    applied: dict[str, Any] = {}
    if given is not None:
        facts["tool"] = "the checkpoint's integers as torchao tensors before to_edge_transform_and_lower"
        facts["given"] = True
        facts["given_method"] = given.method
        facts["scale_dtypes"] = apply_given(step, given, HEAD)
    if recipe.linears is not None:
        if given is None:
            quantize_(step.model, torchao_config(recipe.linears), filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
        applied["linears"] = {**recipe.linears.to_dict(), "params": count["linears"],
                              "scheme": SUPPORTED[(recipe.linears.bits, recipe.linears.granularity)],
                              "kernel": "XNNPACK qd8 fully connected"}  # fmt: skip
    if recipe.embedding is not None:
        if given is None:
            quantize_(step, torchao_config(recipe.embedding), filter_fn=lambda m, fqn: fqn == HEAD)
            qdata, scales = _integers(step.lm_head.weight)
            step.model.embed_tokens = IntRowEmbedding(qdata, scales)  # type: ignore[assignment]
        applied["embedding"] = {**recipe.embedding.to_dict(), "params": count["embedding"],
                                "head": SUPPORTED[(recipe.embedding.bits, recipe.embedding.granularity)],
                                "lookup": "int8 table x fp32 scales on portable kernels, the head's integers",
                                "stored": "twice: the int8 lookup table and the XNNPACK-packed head"}  # fmt: skip
    if recipe.rglru_gates is not None:
        if given is None:
            gates = set(split_gates(step.model))
            quantize_(step.model, torchao_config(recipe.rglru_gates), filter_fn=lambda m, fqn: fqn in gates)
        applied["rglru_gates"] = {**recipe.rglru_gates.to_dict(), "params": count["rglru_gates"],
                                  "scheme": SUPPORTED[(recipe.rglru_gates.bits, recipe.rglru_gates.granularity)],
                                  "kernel": "XNNPACK qd8 fully connected, one per head"}  # fmt: skip
    kept = {"rglru_gates": count["rglru_gates"]} if recipe.rglru_gates is None else {}
    facts["applied"] = applied
    facts["activations"] = ACTIVATIONS if applied else "float"
    facts["kept_float"] = {
        **(
            {"rglru_gates": {"params": count["rglru_gates"], "why": "the recipe leaves the RG-LRU gates float"}}
            if kept
            else {}
        ),
        "other": "conv1d, norms, biases, RG-LRU a_param",
    }
    facts["kept_float_params"] = sum(kept.values()) + other_params
    log.info(
        "executorch quantization %s: %s", recipe.name, {k: v.get("scheme", v.get("head")) for k, v in applied.items()}
    )
    return step, facts


class StepBackend:
    """A :class:`runtime_py.backend.Backend` running a step module eagerly (the quantized eager reference)."""

    name = "torch-step"

    def __init__(self, step: nn.Module, model_config: Any) -> None:
        self.step_module = step.eval()
        self.config = model_config
        self.io = build_iospec(model_config, last_logits=bool(getattr(step, "last_logits", False)))

    def seq_lens(self) -> tuple[int, ...] | None:
        return None

    def init_state(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        dtypes = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}
        return tuple(torch.zeros(s.concrete_shape(batch=batch), dtype=dtypes[s.dtype]) for s in self.io.state_inputs)

    @torch.inference_mode()
    def step(
        self, input_ids: np.ndarray, position_ids: np.ndarray, state: tuple[torch.Tensor, ...]
    ) -> tuple[np.ndarray, tuple[torch.Tensor, ...]]:
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        pos = torch.from_numpy(np.ascontiguousarray(position_ids, dtype=np.int64))
        out = self.step_module(ids, pos, *state)
        names = [s.name for s in self.io.state_inputs]
        route = [names.index(s.pair or "") for s in self.io.state_outputs]
        new = list(state)
        for slot, tensor in zip(route, out[1:], strict=True):
            new[slot] = tensor
        return out[0].float().numpy(), tuple(new)

    def state_arrays(self, state: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        return {s.name: t.float().numpy() for s, t in zip(self.io.state_inputs, state, strict=True)}
